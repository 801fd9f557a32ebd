-- batch.lua: wrk script posting batches of NDJSON usages to
-- POST /api/usages/batch.
--
--   taskset -c 1 wrk -t1 -c16 -d10s -s bench/batch.lua http://127.0.0.1:3000/api/usages/batch
--
-- wrk's Requests/sec counts batches: multiply by BATCH (default 1000) for
-- usages per second. Each thread pre-formats a few bodies with different
-- patientIds and cycles through them.

local size = tonumber(os.getenv("BATCH") or "1000") -- usages per request
local bodies = 8
local ring = {}
local n = 0
local thread_seq = 0

function setup(thread)
   thread:set("thread_id", thread_seq)
   thread_seq = thread_seq + 1
end

function init(args)
   local headers = { ["Content-Type"] = "application/x-ndjson" }
   local patient = 300000 + (thread_id or 0) * size * bodies
   for b = 1, bodies do
      local lines = {}
      for i = 1, size do
         lines[i] = string.format(
            '{"patientId":%d,"timestamp":"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)","medication":"Albuterol"}',
            patient)
         patient = patient + 1
      end
      ring[b] = wrk.format("POST", nil, headers, table.concat(lines, "\n") .. "\n")
   end
end

function request()
   n = n % bodies + 1
   return ring[n]
end
