--[[ The outpatient visit chain, 2201 → 2203 → 2204 → 2206 → 2207, each step sent when the one
before it answered infcode 0; mdtrt_id is read from the 2201 answer. A random hospital, counter
and synthetic person per visit. A step answered otherwise, or left unanswered, drops the visit.

The chain is a per-connection sequence, and wrk's response() does not say which connection
answered: run one connection per thread (-t N -c N).

    wrk -t64 -c64 -d8s --timeout 10s -s benchmarks/wrk/visit.lua URL -- persons=20000

Options: stop_after=2204 ends each visit there (visits opened for presettle.lua), visits=K
stops the thread after K visits, out=PATH writes "code dev_no psn_no mdtrt_id" per visit.
]]

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = here .. "?.lua;" .. package.path
local gw = require("common")

local STEPS = { "2201", "2203", "2204", "2206", "2207" }
-- A 10-line outpatient bill (class A, B and C items), 250.90 in all: loadtest/envelopes.py's.
local LINES = {
  { "ZL0001", "25" }, { "ZL0004", "30" }, { "YP0001", "18.5" }, { "YP0003", "40" },
  { "YP0005", "30" }, { "ZL0005", "60" }, { "YP0002", "12.5" }, { "ZL0008", "20" },
  { "YP0007", "9.9" }, { "ZL0012", "5" },
}
local TOTAL = "250.90"

local last_step, limit
local visit -- { code, dev, psn, mdtrt_id, step }
local awaiting = false
gw_opened = "" -- the visits this thread opened, read by done()

local function register(v, now)
  return '{"data":{"psn_no":"' .. v.psn .. '","insutype":"310","begntime":"' .. now
    .. '","mdtrt_cert_type":"01","mdtrt_cert_no":"' .. v.psn .. '","ipt_otp_no":"LT'
    .. gw.prefix() .. "-" .. gw.next_serial() .. '"}}'
end

local function visit_info(v, now)
  return '{"mdtrtinfo":{"mdtrt_id":"' .. v.mdtrt_id .. '","psn_no":"' .. v.psn
    .. '","med_type":"11","begntime":"' .. now .. '"}}'
end

local function fees(v, now)
  local lines = {}
  for i, line in ipairs(LINES) do
    lines[i] = '{"feedetl_sn":"' .. i .. '","mdtrt_id":"' .. v.mdtrt_id .. '","psn_no":"'
      .. v.psn .. '","chrg_bchno":"B1","fee_ocur_time":"' .. now .. '","medins_list_codg":"'
      .. line[1] .. '","det_item_fee_sumamt":"' .. line[2] .. '","cnt":"1","pric":"' .. line[2]
      .. '","hosp_appr_flag":"1"}'
  end
  return '{"feedetail":[' .. table.concat(lines, ",") .. "]}"
end

-- 2206 and 2207 send the same data node.
local function settle(v)
  return '{"data":{"psn_no":"' .. v.psn .. '","mdtrt_cert_type":"01","mdtrt_cert_no":"' .. v.psn
    .. '","med_type":"11","medfee_sumamt":"' .. TOTAL .. '","psn_setlway":"01","mdtrt_id":"'
    .. v.mdtrt_id .. '","acct_used_flag":"1","insutype":"310","chrg_bchno":"B1"}}'
end

local INPUT = { register, visit_info, fees, settle, settle }

setup = gw.setup

function init(args)
  gw.init(args)
  last_step = gw.opts.stop_after or "2207"
  limit = tonumber(gw.opts.visits or "0")
end

function request()
  if awaiting then
    -- No answer to the last request: the connection was lost, or this thread is wrk's first and
    -- its first request() only served wrk's check of the script (never sent, not a loss).
    if gw_counts.ok + gw_counts.busy + gw_counts.refused > 0 then
      gw_counts.lost = gw_counts.lost + 1
    end
    visit = nil
  end
  if visit == nil then
    visit = { code = gw.pick(gw.HOSPITALS), dev = gw.terminal("HIS"), psn = gw.person(), step = 1 }
  end
  awaiting = true
  local infno = STEPS[visit.step]
  return gw.request(visit.code, visit.dev, infno, INPUT[visit.step](visit, gw.now_text()))
end

function response(status, _headers, body)
  awaiting = false
  if not gw.count(status, body) then
    visit = nil
    return
  end
  if visit.step == 1 then
    visit.mdtrt_id = body:match('"mdtrt_id":"([^"]+)"')
    if visit.mdtrt_id == nil then
      visit = nil
      return
    end
  end
  if STEPS[visit.step] ~= last_step then
    visit.step = visit.step + 1
    return
  end
  gw_counts.visits = gw_counts.visits + 1
  if gw.opts.out then
    gw_opened = gw_opened .. table.concat({ visit.code, visit.dev, visit.psn, visit.mdtrt_id }, " ")
      .. "\n"
  end
  visit = nil
  if limit > 0 and gw_counts.visits >= limit then
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  gw.done(summary, latency, requests)
  local opened = gw.each_thread("gw_opened")
  local opts = gw.each_thread("gw_opts")[1] or {}
  if opts.out then
    local f = assert(io.open(opts.out, "w"))
    f:write(table.concat(opened))
    f:close()
  end
end
