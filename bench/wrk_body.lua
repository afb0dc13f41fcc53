-- wrk script: POST one prepared body (a file) with its content type and an optional extra header; report a JSON
-- line at the end, as bench/wrk_multipart.lua does.
--   BODY=body.bin CONTENT_TYPE=application/json [HEADER="Inference-Header-Content-Length: 123"] \
--     wrk -t1 -c8 -d10s -s bench/wrk_body.lua http://127.0.0.1:8000/predict
local handle = assert(io.open(os.getenv("BODY"), "rb"))
wrk.body = handle:read("*all")
handle:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = os.getenv("CONTENT_TYPE")
local header = os.getenv("HEADER")
if header and header ~= "" then
  local name, value = header:match("^([^:]+):%s*(.*)$")
  wrk.headers[name] = value
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "seconds": %.3f, "non_2xx": %d, "socket_errors": %d, ' ..
    '"p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f}\n',
    summary.requests, summary.duration / 1e6, errors.status, errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
