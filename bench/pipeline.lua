-- pipeline.lua: wrk script sending 16 pipelined POST /api/usages per write,
-- after wrk's own scripts/pipeline.lua.
--
--   taskset -c 1 wrk -t1 -c64 -d10s -s bench/pipeline.lua http://127.0.0.1:3000/api/usages
--
-- wrk counts every response, so its Requests/sec is requests, not batches.
-- Each thread pre-formats a few batches with different patientIds and
-- cycles through them.

local depth = 16   -- requests per pipelined batch
local batches = 16 -- distinct batches per thread
local ring = {}
local n = 0
local thread_seq = 0

function setup(thread)
   thread:set("thread_id", thread_seq)
   thread_seq = thread_seq + 1
end

function init(args)
   local headers = { ["Content-Type"] = "application/json" }
   local patient = 200000 + (thread_id or 0) * depth * batches
   for b = 1, batches do
      local r = {}
      for i = 1, depth do
         r[i] = wrk.format("POST", nil, headers, string.format(
            '{"patientId":%d,"timestamp":"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)","medication":"Albuterol"}',
            patient))
         patient = patient + 1
      end
      ring[b] = table.concat(r)
   end
end

function request()
   n = n % batches + 1
   return ring[n]
end
