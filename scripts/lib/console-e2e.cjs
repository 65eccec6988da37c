// The console's browser test, run by scripts/console-e2e.sh against a live dispatcher
// (HERALD_URL, HERALD_KEY). It owns the webhook receiver the notifications go to, so it
// can make a destination fail and then recover. Each step throws on the first thing that
// is not as an operator would expect; the page's own errors (script errors, refused
// requests, content-security-policy violations) fail it too.
"use strict";
const assert = require("node:assert/strict");
const fs = require("node:fs");
const http = require("node:http");
const os = require("node:os");
const path = require("node:path");
const { chromium } = require("playwright-core");

const base = process.env.HERALD_URL;
const key = process.env.HERALD_KEY;
const shots = process.env.SHOTS;
const TIMEOUT = 30_000;

// /flaky answers 410 Gone (dead at once, its endpoint disabled) until the destination
// "recovers" and is resumed; /gone always does; anything else answers 200. A 410 says why
// in its body, which the attempts table shows. Every delivery's webhook-id is kept, per path.
let flakyRecovered = false;
const GONE_BODY = "endpoint removed by its owner";
const received = [];
const receiver = http.createServer((req, res) => {
  req.resume();
  req.on("end", () => {
    received.push({ path: req.url, id: req.headers["webhook-id"] });
    const gone = req.url === "/gone" || (req.url === "/flaky" && !flakyRecovered);
    const body = gone ? GONE_BODY : "";
    res.writeHead(gone ? 410 : 200, { "content-length": Buffer.byteLength(body) });
    res.end(body);
  });
});

// As a well-behaved client: a 429 (a busy machine sheds low first) is retried after its
// Retry-After.
async function send(recipientPath, priority, n) {
  const deadline = Date.now() + TIMEOUT;
  for (;;) {
    const response = await fetch(`${base}/v1/notifications`, {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: JSON.stringify({
        priority,
        channel: "webhook",
        recipient: `http://127.0.0.1:${receiver.address().port}${recipientPath}`,
        payload: { n },
      }),
    });
    const body = await response.text();
    if (response.status === 429 && Date.now() < deadline) {
      const seconds = Number(response.headers.get("retry-after")) || 1;
      await new Promise((r) => setTimeout(r, seconds * 1000 * (1 + Math.random() / 2)));
      continue;
    }
    assert.equal(response.status, 202, body);
    return JSON.parse(body).id;
  }
}

async function deadLetterIds() {
  const response = await fetch(`${base}/v1/dlq?limit=1000`, {
    headers: { authorization: `Bearer ${key}` },
  });
  return (await response.json()).items.map((d) => d.id);
}

async function until(what, check) {
  const deadline = Date.now() + TIMEOUT;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out waiting until ${what}`);
}

async function main() {
  await new Promise((r) => receiver.listen(0, "127.0.0.1", r));
  // The story: one high notification whose destination is down dies; a few others are
  // delivered; two low ones die for good (to be deleted by filter).
  const target = await send("/flaky", "high", 0);
  for (let n = 1; n <= 3; n++) await send("/ok", "medium", n);
  const doomed = [await send("/gone", "low", 4), await send("/gone", "low", 5)];
  await until("the three notifications are dead letters", async () => {
    const dead = await deadLetterIds();
    return [target, ...doomed].every((id) => dead.includes(id));
  });

  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "herald-chromium-"));
  const executablePath = fs.existsSync("/usr/lib/chromium/chromium")
    ? "/usr/lib/chromium/chromium"
    : "/usr/bin/chromium";
  // On a closed network Chromium's background connections are refused, many at a time.
  const context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    viewport: { width: 1280, height: 800 },
    args: [
      "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--disable-quic",
    ],
  });
  const problems = [];
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(TIMEOUT);
  page.on("pageerror", (e) => problems.push(`script error: ${e.message}`));
  page.on("console", (m) => {
    // The refused sign-in (401) and the unknown id (404) are answers the steps ask for;
    // anything else the browser logs as an error is not expected.
    const expected = /status of (401|404)/.test(m.text());
    if (m.type() === "error" && !expected) problems.push(`console: ${m.text()}`);
  });
  // The console reads the tenant's own data only: never the process's /metrics.
  page.on("request", (r) => {
    if (new URL(r.url()).pathname === "/metrics") problems.push(`requested ${r.url()}`);
  });
  page.on("requestfailed", (r) => problems.push(`request failed: ${r.url()} ${r.failure().errorText}`));
  page.on("dialog", (d) => d.accept());
  const shot = (name) => page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
  try {
    // Sign in: a wrong key is refused with a message; the right one opens the overview.
    await page.goto(`${base}/console`);
    await page.locator("#view-signin").waitFor();
    await page.fill("#api-key", "hk_not_a_key");
    await page.click("#signin button");
    await page.locator("#flash.error").waitFor();
    assert.match(await page.textContent("#flash"), /refused/);
    await page.fill("#api-key", key);
    await page.click("#signin button");
    await page.locator("#view-overview").waitFor();

    // The tenant's summary: one row per priority; what was sent shows up in its counters.
    await page.waitForFunction(() => {
      const cell = document.querySelector('#rates tr[data-priority="high"] td[data-family="accepted"]');
      return cell && /^\d+$/.test(cell.textContent);
    });
    const rows = await page.locator("#rates tbody tr").count();
    assert.equal(rows, 3, "one row per priority");
    await send("/ok", "high", 6);
    await page.waitForFunction(() => {
      const cell = document.querySelector('#rates tr[data-priority="high"] td[data-family="accepted"]');
      return cell && Number(cell.textContent) > 0;
    });
    assert.match(await page.textContent("#dlq-size"), /^\d+$/);
    await shot("1-overview");

    // Recent notifications, filtered to the dead ones: the target is among them.
    await page.click('#nav a[data-view="notifications"]');
    await page.selectOption('#filter-notifications select[name="status"]', "dead");
    await page.click("#filter-notifications button");
    // The unfiltered rows stay until the filtered page arrives: wait for it, not for the
    // target alone (it is among the unfiltered rows too).
    await page.waitForFunction(() => {
      const statuses = [...document.querySelectorAll("#notifications td.status")].map((c) => c.textContent);
      return statuses.length >= 3 && statuses.every((s) => s === "dead");
    });
    await page.locator(`#notifications a.id:text-is("${target}")`).waitFor();
    await shot("2-notifications-dead");

    // The DLQ lists it with why it died; its page shows the attempt and its outcome.
    await page.click('#nav a[data-view="dlq"]');
    const row = page.locator(`#dead-letters tr[data-id="${target}"]`);
    await row.waitFor();
    assert.equal((await row.locator("td").nth(4).textContent()).trim(), "410");
    await row.locator("a.id").click();
    await page.locator("#view-detail").waitFor();
    await page.locator("#detail-status:text-is('dead')").waitFor();
    await page.locator("#attempts tbody tr td.status.dead").waitFor();
    // What the receiver answered, apart from the error.
    const answered = page.locator("#attempts tbody tr", { has: page.locator("td.status.dead") });
    assert.equal((await answered.locator("td.response").textContent()).trim(), GONE_BODY);
    // The trace id the recorder kept, to find the notification's spans by.
    const traceId = page.locator("#detail-fields dt:text-is('trace id') + dd");
    assert.match(await traceId.textContent(), /^[0-9a-f]{32}$/);
    await shot("3-dead-notification");

    // The destination recovers. Its 410 disabled the endpoint (Standard Webhooks: "stop"),
    // so the operator resumes the destination (API), then a replay from the page is
    // delivered, and the page follows.
    flakyRecovered = true;
    const destination = encodeURIComponent(`webhook:127.0.0.1:${receiver.address().port}`);
    const resumed = await fetch(`${base}/v1/destinations/${destination}/resume`, {
      method: "POST",
      headers: { authorization: `Bearer ${key}` },
    });
    assert.equal(resumed.status, 200, await resumed.text());
    // Delivery follows the bucket's watch within moments.
    await new Promise((r) => setTimeout(r, 500));
    await page.click("#detail-replay");
    await page.locator("#flash.ok").waitFor();
    await page.locator("#detail-status:text-is('delivered')").waitFor();
    await page.locator("#attempts tbody tr td.status.delivered").waitFor();
    const delivered = received.filter((r) => r.path === "/flaky" && r.id === target).length;
    assert.equal(delivered, 2, "one failed attempt, then the replay");
    assert.ok(!(await deadLetterIds()).includes(target), "the replay left the DLQ");
    await shot("4-replayed-and-delivered");

    // Delete by filter: the low dead letters go, and only they.
    await page.click('#nav a[data-view="dlq"]');
    await page.selectOption('#filter-dlq select[name="priority"]', "low");
    await page.click("#filter-dlq button[type=submit]");
    await page.locator(`#dead-letters tr[data-id="${doomed[0]}"]`).waitFor();
    await page.click("#dlq-delete-all");
    await page.locator("#flash.ok:has-text('Deleted 2')").waitFor();
    await page.locator("#dead-letters td.empty").waitFor();
    const left = await deadLetterIds();
    assert.ok(doomed.every((id) => !left.includes(id)), "the low dead letters are gone");
    await shot("5-deleted-by-filter");

    // Looking up an id that is not the tenant's says so, and signing out forgets the key.
    await page.fill("#lookup-id", "019ac0e1-0000-7000-8000-000000000000");
    await page.click("#lookup button");
    await page.locator("#flash.error:has-text('no such notification')").waitFor();
    await page.click("#sign-out");
    await page.locator("#view-signin").waitFor();
    assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  } catch (err) {
    await shot("failure").catch(() => {});
    throw err;
  } finally {
    await context.close();
    // close() alone waits for idle keep-alive connections, and the dispatcher's webhook
    // client keeps one to this receiver: that held node open after a passing run.
    receiver.close();
    receiver.closeAllConnections();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  assert.deepEqual(problems, [], "the page ran without errors");
  console.error(`console-e2e: every step passed; screenshots in ${shots}`);
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(`console-e2e: ${err.stack || err}`);
    process.exit(1);
  },
);
