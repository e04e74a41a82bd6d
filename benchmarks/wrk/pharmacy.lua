--[[ 2101 pharmacy pre-settlement or 2102 durable pharmacy settlement (option infno=2101|2102):
a 5-line basket for a random synthetic person, at a random pharmacy's random counter, the person
identified by an electronic voucher (mdtrt_cert_type 01, the psn_no as its token).

    wrk -t1 -c64 -d8s --timeout 10s -s benchmarks/wrk/pharmacy.lua URL -- infno=2102 persons=20000

Also the bare ceiling's load (the same requests against benchmarks/bare_server.py), and, with
rate=R threads=T, an open-loop load of R requests/s (the overload run; see gw.delay).
]]

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = here .. "?.lua;" .. package.path
local gw = require("common")

-- (code, price) of the basket: loadtest/envelopes.py's BASKET, 79.60 in all.
local BASKET = {
  { "YP0001", "18.50" }, { "YP0002", "12.50" }, { "YP0004", "9.90" }, { "YP0007", "9.90" },
  { "YP0009", "28.80" },
}
local TOTAL = "79.60"
local infno

-- Everything after the person changes once a second (the times): built then, not per request.
local built_at, after_person

local function basket(psn)
  local now = gw.now_text()
  if now ~= built_at then
    built_at = now
    local lines = {}
    for i, line in ipairs(BASKET) do
      lines[i] = '{"feedetl_sn":"' .. i .. '","fee_ocur_time":"' .. now
        .. '","medins_list_codg":"' .. line[1] .. '","det_item_fee_sumamt":"' .. line[2]
        .. '","cnt":"1","pric":"' .. line[2] .. '"}'
    end
    after_person = '","begntime":"' .. now .. '","medfee_sumamt":"' .. TOTAL
      .. '","insutype":"310","acct_used_flag":"1","med_type":"41"},"drugdetail":['
      .. table.concat(lines, ",") .. "]}"
  end
  return '{"druginfo":{"psn_no":"' .. psn .. '","mdtrt_cert_type":"01","mdtrt_cert_no":"' .. psn
    .. after_person
end

setup = gw.setup
done = gw.done

function init(args)
  gw.init(args)
  infno = gw.opts.infno or "2102"
  assert(infno == "2101" or infno == "2102", "infno=2101 or infno=2102")
  if gw.opts.rate then
    -- wrk looks for delay() after the first thread's init(): paced only when asked.
    delay = gw.delay
  end
end

function request()
  return gw.request(gw.pick(gw.PHARMACIES), gw.terminal("POS"), infno,
    basket(gw.person()))
end

function response(status, _headers, body)
  gw.count(status, body)
end
