# expect-exit: 0
import torch


class Config:
    scale = torch.tensor(2.0)
    table = [torch.ones(1).item() * i for i in range(3)]

    class Inner:
        eye = torch.eye(2).sum().item()

    def __init__(self):
        self.__secret = torch.arange(3)

    def __private(self):
        return torch.sum(self.__secret).item()

    def reveal(self):
        return self.__private() * self.scale.item()


print(Config.table, Config.Inner.eye, Config().reveal(), hasattr(Config(), "_Config__secret"))
