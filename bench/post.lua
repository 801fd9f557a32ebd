-- post.lua: wrk script for busyapi's POST /api/usages.
--
--   taskset -c 1 wrk -t1 -c64 -d10s -s bench/post.lua http://127.0.0.1:3000/api/usages
--
-- Each thread pre-formats a ring of requests whose bodies differ only in
-- patientId, then hands them out in turn. request() only indexes a Lua
-- table, so varying the body costs little wrk throughput. With
-- WRK_FIXED_BODY=1 in the environment the script defines no request(), so
-- wrk sends one static request (its fastest mode) with a fixed body.

local ring_size = 256 -- distinct requests per thread
local ring = {}
local n = 0
local thread_seq = 0

local function body(patient)
   return string.format(
      '{"patientId":%d,"timestamp":"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)","medication":"Albuterol"}',
      patient)
end

-- setup runs in the main Lua state once per thread: give each thread its
-- own block of patient ids.
function setup(thread)
   thread:set("thread_id", thread_seq)
   thread_seq = thread_seq + 1
end

function init(args)
   local base = 100000 + (thread_id or 0) * ring_size
   local headers = { ["Content-Type"] = "application/json" }
   for i = 1, ring_size do
      ring[i] = wrk.format("POST", nil, headers, body(base + i - 1))
   end
end

if os.getenv("WRK_FIXED_BODY") == "1" then
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   wrk.body = body(100)
   init = nil
else
   function request()
      n = n % ring_size + 1
      return ring[n]
   end
end
