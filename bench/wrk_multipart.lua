-- wrk script: POST one file as multipart field "image" to /predict, report a JSON line at the end.
--   FILE=photo.jpg wrk -t1 -c8 -d10s -s bench/wrk_multipart.lua http://127.0.0.1:8000/predict
local path = os.getenv("FILE")
local handle = assert(io.open(path, "rb"))
local data = handle:read("*all")
handle:close()
local boundary = "pocketcnnbenchboundary"
local content_type = path:match("%.jpe?g$") and "image/jpeg" or "image/png"
wrk.method = "POST"
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary
wrk.body = "--" .. boundary .. "\r\n" ..
  'Content-Disposition: form-data; name="image"; filename="' .. path:match("[^/]+$") .. '"\r\n' ..
  "Content-Type: " .. content_type .. "\r\n\r\n" .. data .. "\r\n--" .. boundary .. "--\r\n"

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "seconds": %.3f, "non_2xx": %d, "socket_errors": %d, ' ..
    '"p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f}\n',
    summary.requests, summary.duration / 1e6, errors.status, errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
