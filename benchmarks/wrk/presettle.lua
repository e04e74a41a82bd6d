--[[ 2206 outpatient pre-settlement over visits opened beforehand (visit.lua with stop_after=2204
and out=PATH; not measured). Each thread takes the visits in turn from its own starting point,
so concurrent requests land on different visits. The ledger is unchanged; the gateway notes each
pre-settlement.

    wrk -t1 -c64 -d8s --timeout 10s -s benchmarks/wrk/presettle.lua URL -- visits=PATH
]]

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = here .. "?.lua;" .. package.path
local gw = require("common")

local visits = {}
local turn = 0

setup = gw.setup
done = gw.done

function init(args)
  gw.init(args)
  assert(gw.opts.visits, "visits=PATH of opened visits")
  local f = assert(io.open(gw.opts.visits, "r"))
  for line in f:lines() do
    local code, dev, psn, mdtrt_id = line:match("^(%S+) (%S+) (%S+) (%S+)$")
    if code then
      local input = '{"data":{"psn_no":"' .. psn .. '","mdtrt_cert_type":"01","mdtrt_cert_no":"'
        .. psn .. '","med_type":"11","medfee_sumamt":"250.90","psn_setlway":"01","mdtrt_id":"'
        .. mdtrt_id .. '","acct_used_flag":"1","insutype":"310","chrg_bchno":"B1"}}'
      visits[#visits + 1] = { code, dev, input }
    end
  end
  f:close()
  assert(#visits > 0, "no visits in " .. gw.opts.visits)
  turn = (gw.tid * 7919) % #visits
end

function request()
  turn = turn % #visits + 1
  local v = visits[turn]
  return gw.request(v[1], v[2], "2206", v[3])
end

function response(status, _headers, body)
  gw.count(status, body)
end
