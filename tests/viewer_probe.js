// Drives a headless Chromium over the DevTools protocol through what a person does in the Perfetto UI: open URL,
// wait for the trace, click each process's expand button, select the first process's slice STEP_NAME (through the
// UI's selection, as a click on it does), focus on it ('f'), then select the deepest call in that step. Prints one
// JSON object of what the page then shows, and saves a screenshot:
//   tracks: the track list top to bottom ({title, depth, chips, height}: title as the UI writes it, depth 0 for a
//           process, chips its badges ("main thread"), height of its row in px);
//   step, nested: the selected slice's details panel text, and for the nested call its depth and its parent's name
//           (from the UI's own trace processor);
//   text: the page's visible text (the UI's error dialogs say "Oops" / "Failed").
// Needs Node 20+ (run with --experimental-websocket).
// usage: node --experimental-websocket viewer_probe.js DEBUG_PORT URL SECONDS SCREENSHOT.png STEP_NAME
const fs = require("fs");
const [port, url, seconds, screenshot, stepName] = process.argv.slice(2);
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

// In the page: the track list as drawn, and SQL on the UI's own trace processor.
const PAGE_HELPERS = `
window.__tracks = () => Array.from(document.querySelectorAll('.pf-track')).map((e) => {
  const header = e.querySelector(':scope > .pf-track__header');
  return {
    title: header.querySelector('.pf-track__title-popup').textContent.trim(),
    depth: Number(getComputedStyle(e).getPropertyValue('--depth')),
    chips: Array.from(header.querySelectorAll('.pf-track__chips > *')).map((c) => c.textContent.trim()),
    height: Math.round(header.getBoundingClientRect().height),
  };
});
window.__sql = async (query) => {
  const result = await app.trace.engine.query(query);
  const columns = result.columns(), rows = [];
  for (const it = result.iter({}); it.valid(); it.next()) {
    const row = {};
    for (const c of columns) { const v = it.get(c); row[c] = typeof v === 'bigint' ? Number(v) : v; }
    rows.push(row);
  }
  return rows;
};
window.__details = () => { const d = document.querySelector('.pf-details-shell'); return d ? d.innerText : ''; };
true`;

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
  const evaluate = async (expression) => {
    const reply = await send("Runtime.evaluate", { expression, returnByValue: true, awaitPromise: true });
    if (!reply.result || reply.result.exceptionDetails) throw new Error(`in the page: ${JSON.stringify(reply).slice(0, 500)}`);
    return reply.result.result.value;
  };
  const click = async (x, y) => {
    for (const type of ["mouseMoved", "mousePressed", "mouseReleased"])
      await send("Input.dispatchMouseEvent", { type, x, y, button: "left", clickCount: 1 });
  };
  const until = async (expression, what) => {  // the UI redraws when it gets to it: poll, up to SECONDS
    for (let i = 0; i < Number(seconds) * 4; i++) {
      if (await evaluate(expression)) return;
      await sleep(250);
    }
    throw new Error(`the page never showed ${what}`);
  };
  const key = async (text) => {
    await send("Input.dispatchKeyEvent", { type: "keyDown", key: text, text });
    await send("Input.dispatchKeyEvent", { type: "keyUp", key: text });
  };

  await send("Emulation.setDeviceMetricsOverride", { width: 1600, height: 1000, deviceScaleFactor: 1, mobile: false });
  await send("Page.navigate", { url });
  let loaded = false;
  for (let i = 0; i < Number(seconds) && !loaded; i++) {
    await sleep(1000);
    loaded = await evaluate("!!(window.app && app.trace && document.querySelector('.pf-track'))");
  }
  if (!loaded) throw new Error(`no track shown after ${seconds} s: ${await evaluate("document.body.innerText")}`);
  await evaluate(PAGE_HELPERS);
  await sleep(1000);

  // expand every process, top to bottom, by clicking its expand button as a person does
  const processes = (await evaluate("__tracks()")).filter((t) => t.depth === 0).length;
  for (let n = 0; n < processes; n++) {
    const box = await evaluate(`(() => {
      const b = Array.from(document.querySelectorAll('.pf-track')).filter((e) =>
        getComputedStyle(e).getPropertyValue('--depth').trim() === '0')[${n}].querySelector('.pf-track__collapse-button');
      const r = b.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()`);
    const before = (await evaluate("__tracks()")).length;
    await click(box[0], box[1]);
    await until(`__tracks().length > ${before}`, `the tracks of process ${n + 1} after its expand button was clicked`);
  }
  await sleep(1000);
  const tracks = await evaluate("__tracks()");

  // the step slice of the first process: selected, then focused with 'f' so the screenshot shows its calls
  const pick = await evaluate(`(async () => {
    const step = (await __sql(\`select s.id, s.ts, s.dur, s.track_id from slice s join thread_track tt on s.track_id = tt.id
      join thread using (utid) join process using (upid)
      where s.category = 'step' and s.name = '${stepName}' order by process.name limit 1\`))[0];
    const nested = (await __sql(\`select c.id, c.name, c.depth, p.name as parent from slice c join slice p on c.parent_id = p.id
      join thread_track tt on c.track_id = tt.id join thread using (utid)
      where c.category = 'call' and c.depth >= 1 and c.ts >= \${step.ts} and c.ts < \${step.ts + step.dur}
        and thread.upid = (select upid from thread_track join thread using (utid) where thread_track.id = \${step.track_id})
      order by c.depth desc, c.ts limit 1\`))[0];
    return {step, nested};
  })()`);
  await evaluate(`app.trace.selection.selectSqlEvent('slice', ${pick.step.id}, {scrollToSelection: true, switchToCurrentSelectionTab: true}); true`);
  await until(`__details().includes('slice[${pick.step.id}]')`, "the step slice's details");
  await key("f");
  await sleep(1000);
  const step = await evaluate("__details()");
  await evaluate(`app.trace.selection.selectSqlEvent('slice', ${pick.nested.id}, {switchToCurrentSelectionTab: true}); true`);
  await until(`__details().includes('slice[${pick.nested.id}]')`, "the nested call's details");
  await sleep(1000);
  const nested = { ...pick.nested, details: await evaluate("__details()") };
  const shot = await send("Page.captureScreenshot", { format: "png" });
  fs.writeFileSync(screenshot, Buffer.from(shot.result.data, "base64"));
  const text = await evaluate("document.body.innerText");
  console.log(JSON.stringify({ tracks, step, nested, text }));
  ws.close();
  process.exit(0);
})().catch((error) => {
  console.error(String(error));
  process.exit(3);
});
