# expect-exit: 0
import asyncio

import torch


class Lock:
    async def __aenter__(self):
        return torch.zeros(1)

    async def __aexit__(self, *exc):
        return False


async def numbers(n):
    for i in range(n):
        await asyncio.sleep(0)
        yield torch.tensor(float(i))


async def work(scale):
    async with Lock() as z:
        acc = z
        async for t in numbers(4):
            acc = torch.add(acc, t * scale)
    return acc.item()


async def main():
    results = await asyncio.gather(work(1.0), work(2.0))
    print(results, [x async for x in numbers(2)][-1].item())


asyncio.run(main())
