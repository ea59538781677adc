// Drives a headless Chromium over the DevTools protocol: opens URL and prints the page's visible text once it
// matches WAIT_FOR (a regular expression), or after SECONDS. Needs Node 20+ (run with --experimental-websocket).
// usage: node --experimental-websocket viewer_probe.js DEBUG_PORT URL WAIT_FOR SECONDS
const [port, url, waitFor, seconds] = process.argv.slice(2);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function pageTarget() {
  for (let i = 0; i < 100; i++) {
    try {
      const list = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json();
      const page = list.find((t) => t.type === "page");
      if (page) return page;
    } catch (e) {}
    await sleep(200);
  }
  throw new Error("no page target on the debugging port");
}

(async () => {
  const ws = new WebSocket((await pageTarget()).webSocketDebuggerUrl);
  await new Promise((resolve) => ws.addEventListener("open", resolve));
  let id = 0;
  const waiting = new Map();
  ws.addEventListener("message", (event) => {
    const message = JSON.parse(event.data);
    if (waiting.has(message.id)) {
      waiting.get(message.id)(message);
      waiting.delete(message.id);
    }
  });
  const send = (method, params = {}) =>
    new Promise((resolve) => {
      id += 1;
      waiting.set(id, resolve);
      ws.send(JSON.stringify({ id, method, params }));
    });
  await send("Page.navigate", { url });
  const pattern = new RegExp(waitFor);
  let text = "";
  for (let i = 0; i < Number(seconds); i++) {
    await sleep(1000);
    const reply = await send("Runtime.evaluate", {
      expression: "document.body ? document.body.innerText : ''",
      returnByValue: true,
    });
    text = reply.result && reply.result.result ? reply.result.result.value : "";
    if (pattern.test(text)) break;
  }
  console.log(text);
  ws.close();
  process.exit(0);
})().catch((error) => {
  console.error(String(error));
  process.exit(3);
});
