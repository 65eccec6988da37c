-- A batch of BATCH notifications (env, default 1000) per request, priorities mixed.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = tonumber(os.getenv("BATCH") or "1000")
local priorities = { "high", "medium", "low" }
local items = {}
for i = 1, n do
  items[i] = string.format(
    '{"priority":"%s","channel":"webhook","recipient":"http://127.0.0.1:9/hook","payload":{"order":"A-%d","status":"shipped","eta":"2026-11-27"}}',
    priorities[(i % 3) + 1], i)
end
wrk.body = "[" .. table.concat(items, ",") .. "]"
