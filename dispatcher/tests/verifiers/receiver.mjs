// A webhook receiver that verifies every request with the `standardwebhooks` package from
// npm (not Herald's code); the same contract as receiver.py.
import http from "node:http";
import { Webhook } from "standardwebhooks";

const hook = new Webhook(process.env.WEBHOOK_SECRET);
const seen = new Set();

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const body = Buffer.concat(chunks).toString("utf8");
    const line = { path: req.url, id: req.headers["webhook-id"] ?? null, verified: false };
    let status = 401;
    try {
      hook.verify(body, req.headers);
      line.verified = true;
      status = 204;
      if (req.url === "/flaky" && !seen.has(line.id)) {
        seen.add(line.id);
        status = 503;
      }
    } catch (e) {
      line.error = `${e.name}: ${e.message}`;
    }
    process.stdout.write(JSON.stringify(line) + "\n");
    res.writeHead(status, { "content-length": "0" });
    res.end();
  });
});
server.listen(Number(process.env.PORT ?? 0), "127.0.0.1", () => process.stdout.write(server.address().port + "\n"));
