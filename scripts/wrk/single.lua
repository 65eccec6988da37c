-- One notification per request (a static body, so wrk itself stays cheap).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"priority":"medium","channel":"webhook","recipient":"http://127.0.0.1:9/hook","payload":{"order":"A-1042","status":"shipped","eta":"2026-11-27"}}'
