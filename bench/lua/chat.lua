-- wrk script for make bench: POST one fixed chat body, print a JSON summary.
--
-- The body comes from the file named by BENCH_BODY_FILE and the User-Agent from
-- BENCH_AGENT (the nginx stand-in picks streamed or non-streamed on it); a key, if the
-- gateway wants one, from BENCH_API_KEY. wrk's
-- latency is the time from writing the request to the end of the response (the
-- last chunk of a chunked body), i.e. time to last byte.

local function slurp(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

wrk.method = "POST"
wrk.body = slurp(os.getenv("BENCH_BODY_FILE"))
wrk.headers["Content-Type"] = "application/json"
wrk.headers["User-Agent"] = os.getenv("BENCH_AGENT") or "nebula-bench"
local key = os.getenv("BENCH_API_KEY")
if key and key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_JSON {\"requests\":%d,\"duration_us\":%d,\"bytes\":%d," ..
    "\"p50_us\":%d,\"p90_us\":%d,\"p99_us\":%d,\"mean_us\":%.1f,\"max_us\":%d," ..
    "\"errors\":{\"connect\":%d,\"read\":%d,\"write\":%d,\"status\":%d,\"timeout\":%d}}\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
