--[[ What every wrk scenario shares: options, x-tif signing, envelopes, answer counting, pacing
and the one JSON line (prefixed "WRK_JSON ") that benchmarks/wrk_harness.py reads.

Options come after wrk's "--" as key=value words: auth=on|off, persons=N (synthetic persons
S441800…1..N), credentials=PATH, run=TOKEN (three characters, keeps msgids and nonces of
different runs apart), rate=R (requests/s over all threads; only scripts that define delay()).

Every thread signs each request itself, as a counter does: SHA-256 from the libcrypto wrk is
linked with (through LuaJIT's FFI), or a pure-Lua SHA-256 where that is missing; both are
checked against a known digest when the script loads.
]]

local ffi = require("ffi")
local bit = require("bit")

local M = {}

M.HERE = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
M.PATH = "/fsi/api/rsfComIfsService/callService"
M.REGION = "441800"
-- The demo set's institutions (config/demo/institutions.csv): settlements are spread over all of
-- them; those outside 441800 settle the same insured persons as out-of-area visits.
M.PHARMACIES = { "P44180000001", "P52050000001", "P33030000001" }
M.HOSPITALS = {
  "H44180000001", "H44180000002", "H44180000003", "H52050000001", "H52050000002", "H33030000001",
}
M.TERMINALS = 32 -- counters per institution: dev_no POS001… or HIS001…

-- SHA-256 ------------------------------------------------------------------------------------

local band, bor, bxor, bnot = bit.band, bit.bor, bit.bxor, bit.bnot
local rshift, lshift, ror, tobit, tohex = bit.rshift, bit.lshift, bit.ror, bit.tobit, bit.tohex

local K = {
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
}

local function sha256_lua(msg)
  local len = #msg
  local bits = len * 8
  msg = msg .. "\128" .. string.rep("\0", (55 - len) % 64) .. "\0\0\0\0"
    .. string.char(band(rshift(bits, 24), 255), band(rshift(bits, 16), 255),
                   band(rshift(bits, 8), 255), band(bits, 255))
  local h0, h1, h2, h3 = 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a
  local h4, h5, h6, h7 = 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19
  local w = {}
  for chunk = 1, #msg, 64 do
    for i = 0, 15 do
      local a, b, c, d = msg:byte(chunk + i * 4, chunk + i * 4 + 3)
      w[i] = bor(lshift(a, 24), lshift(b, 16), lshift(c, 8), d)
    end
    for i = 16, 63 do
      local v15, v2 = w[i - 15], w[i - 2]
      local s0 = bxor(ror(v15, 7), ror(v15, 18), rshift(v15, 3))
      local s1 = bxor(ror(v2, 17), ror(v2, 19), rshift(v2, 10))
      w[i] = tobit(w[i - 16] + s0 + w[i - 7] + s1)
    end
    local a, b, c, d, e, f, g, h = h0, h1, h2, h3, h4, h5, h6, h7
    for i = 0, 63 do
      local t1 = h + bxor(ror(e, 6), ror(e, 11), ror(e, 25)) + bxor(band(e, f), band(bnot(e), g))
        + K[i + 1] + w[i]
      local t2 = bxor(ror(a, 2), ror(a, 13), ror(a, 22)) + bxor(band(a, b), band(a, c), band(b, c))
      h, g, f, e = g, f, e, tobit(d + t1)
      d, c, b, a = c, b, a, tobit(t1 + t2)
    end
    h0, h1, h2, h3 = tobit(h0 + a), tobit(h1 + b), tobit(h2 + c), tobit(h3 + d)
    h4, h5, h6, h7 = tobit(h4 + e), tobit(h5 + f), tobit(h6 + g), tobit(h7 + h)
  end
  return tohex(h0) .. tohex(h1) .. tohex(h2) .. tohex(h3)
    .. tohex(h4) .. tohex(h5) .. tohex(h6) .. tohex(h7)
end

local HEX = {}
for i = 0, 255 do
  HEX[i] = string.format("%02x", i)
end

local function libcrypto_sha256()
  ffi.cdef [[unsigned char *SHA256(const unsigned char *d, size_t n, unsigned char *md);]]
  local ok, fn = pcall(function() return ffi.C.SHA256 end)
  if not ok then
    ok, fn = pcall(function() return ffi.load("crypto").SHA256 end)
  end
  if not ok then
    return nil
  end
  local md = ffi.new("unsigned char[32]")
  local out = {}
  return function(msg)
    fn(msg, #msg, md)
    for i = 0, 31 do
      out[i + 1] = HEX[md[i]]
    end
    return table.concat(out)
  end
end

local ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
local LONG = "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
local LONG_TEXT = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
assert(sha256_lua("abc") == ABC and sha256_lua(LONG_TEXT) == LONG, "pure-Lua SHA-256 is wrong")
M.sha256 = sha256_lua
M.sha256_impl = "lua"
if os.getenv("GW_WRK_PURE_LUA_SHA256") ~= "1" then
  local native = libcrypto_sha256()
  if native ~= nil then
    assert(native("abc") == ABC and native(LONG_TEXT) == LONG, "libcrypto SHA-256 is wrong")
    M.sha256 = native
    M.sha256_impl = "libcrypto"
  end
end

-- Clock ---------------------------------------------------------------------------------------

ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } gw_timespec;
int clock_gettime(int clk_id, gw_timespec *tp);
]]
local ts = ffi.new("gw_timespec")

function M.monotonic_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

-- The wall-clock texts change once a second: formatted then, not per request.
local last_second, stamp14, text19

local function tick()
  local now = os.time()
  if now ~= last_second then
    last_second = now
    stamp14 = os.date("%Y%m%d%H%M%S", now)
    text19 = os.date("%Y-%m-%d %H:%M:%S", now)
  end
  return now
end

function M.now_text()
  tick()
  return text19
end

-- Per-thread state ----------------------------------------------------------------------------

M.opts = {}
local secrets = {}
local serial = 0
local prefix = "000000" -- run token (3) + thread number (3)
local headers = {}

-- Read by done() through thread:get: numbers and strings only.
gw_counts = { ok = 0, busy = 0, refused = 0, lost = 0, visits = 0, first_refusal = "" }

local function read_credentials(path)
  local f = assert(io.open(path, "r"), "cannot read credentials " .. path)
  local code
  for line in f:lines() do
    code = line:match("^%[institutions%.([%w_%-]+)%]") or code
    local secret = line:match('^%s*secret%s*=%s*"([^"]*)"')
    if code and secret then
      secrets[code] = secret
    end
  end
  f:close()
end

function M.init(args)
  for _, word in ipairs(args or {}) do
    local k, v = word:match("^([%w_]+)=(.*)$")
    assert(k, "options are key=value, got " .. tostring(word))
    M.opts[k] = v
  end
  M.opts.auth = M.opts.auth or "on"
  M.opts.persons = tonumber(M.opts.persons or "2000")
  M.tid = gw_tid or 1
  local run = (M.opts.run or string.format("%03d", os.time() % 1000)):sub(1, 3)
  prefix = run .. string.format("%03d", M.tid % 1000)
  math.randomseed(os.time() * 1000 + M.tid * 7919 + math.floor(M.monotonic_ms() % 1000))
  serial = math.random(0, 10 ^ 7)
  if M.opts.auth == "on" then
    read_credentials(M.opts.credentials or (M.HERE .. "../../config/demo/credentials.toml"))
  end
  gw_opts = M.opts
  gw_counts.sha256 = M.sha256_impl
end

function M.person()
  return string.format("S%s%012d", M.REGION, math.random(1, M.opts.persons))
end

function M.pick(list)
  return list[math.random(1, #list)]
end

function M.terminal(kind)
  return string.format("%s%03d", kind, math.random(1, M.TERMINALS))
end

function M.next_serial()
  serial = serial + 1
  return serial
end

-- The run token and thread number: what keeps one process's ids apart from another's started
-- in the same second (their serials start at random and may overlap).
function M.prefix()
  return prefix
end

-- A request ------------------------------------------------------------------------------------

-- msgid: institution (12) + time (14) + run (3) + thread (3) + serial (8), 40 characters.
function M.envelope(code, dev_no, infno, input)
  tick()
  local msgid = code .. stamp14 .. prefix .. string.format("%08d", M.next_serial() % 100000000)
  return '{"infno":"' .. infno .. '","msgid":"' .. msgid
    .. '","mdtrtarea_admvs":"' .. code:sub(2, 7) .. '","insuplc_admdvs":"' .. M.REGION
    .. '","recer_sys_code":"YBXT","dev_no":"' .. dev_no .. '","infver":"V1.0","opter_type":"1"'
    .. ',"opter":"OP-' .. dev_no .. '","opter_name":"收费员","inf_time":"' .. text19
    .. '","fixmedins_code":"' .. code .. '","fixmedins_name":"演示机构","sign_no":"","input":'
    .. input .. "}"
end

-- Headers are rebuilt per request: wrk.format adds Host and Content-Length to the table.
function M.request(code, dev_no, infno, input)
  local body = M.envelope(code, dev_no, infno, input)
  for k in pairs(headers) do
    headers[k] = nil
  end
  headers["Content-Type"] = "application/json"
  if M.opts.auth == "on" then
    local stamp = tostring(tick())
    local nonce = prefix .. string.format("%010d", M.next_serial())
    headers["x-tif-paasid"] = code
    headers["x-tif-timestamp"] = stamp
    headers["x-tif-nonce"] = nonce
    headers["x-tif-signature"] = M.sha256(stamp .. assert(secrets[code], code) .. nonce .. stamp)
  end
  return wrk.format("POST", M.PATH, headers, body)
end

-- An answer ------------------------------------------------------------------------------------

local BUSY = { "繁忙", "稍候" } -- the overload guard's and the plan's "busy, retry" words

-- True for infcode 0; otherwise counted as busy (shed) or refused (any other answer).
function M.count(status, body)
  if status == 200 and body:find('"infcode":0', 1, true) then
    gw_counts.ok = gw_counts.ok + 1
    return true
  end
  for _, word in ipairs(BUSY) do
    if body:find(word, 1, true) then
      gw_counts.busy = gw_counts.busy + 1
      return false
    end
  end
  gw_counts.refused = gw_counts.refused + 1
  if gw_counts.first_refusal == "" then
    gw_counts.first_refusal = status .. " " .. body:sub(1, 400)
  end
  return false
end

-- Open-loop pacing (scripts that set `delay = gw.delay`): each request takes the thread's next
-- slot of rate/threads a second (threads=N must be given) and waits for it; late slots are not
-- forgiven, a request already late goes at once. The offered rate holds only while connections
-- are free, so run with many more than rate x latency; answers/s shows what was offered.
local next_slot

function M.delay()
  local now = M.monotonic_ms()
  next_slot = (next_slot or now) + 1000 * tonumber(M.opts.threads or 1) / tonumber(M.opts.rate)
  return math.max(0, math.floor(next_slot - now))
end

-- Results (main state) ------------------------------------------------------------------------

local threads = {}

function M.setup(thread)
  threads[#threads + 1] = thread
  thread:set("gw_tid", #threads)
end

local function json_string(s)
  s = s:gsub('[%c"\\]', function(c)
    return string.format("\\u%04x", c:byte())
  end)
  return '"' .. s .. '"'
end

-- One JSON line: counts of the scripts' own classification and wrk's latency percentiles (µs).
function M.done(summary, latency, _requests)
  local c = { ok = 0, busy = 0, refused = 0, lost = 0, visits = 0 }
  local first, impl = "", "?"
  for _, thread in ipairs(threads) do
    local t = thread:get("gw_counts")
    for k in pairs(c) do
      c[k] = c[k] + (t[k] or 0)
    end
    if first == "" then
      first = t.first_refusal or ""
    end
    impl = t.sha256 or impl
  end
  local seconds = summary.duration / 1e6
  local answers = c.ok + c.busy + c.refused
  local e = summary.errors
  local fields = {
    '"requests":' .. summary.requests,
    '"answers":' .. answers,
    '"seconds":' .. string.format("%.3f", seconds),
    '"rate":' .. string.format("%.1f", answers / seconds),
    '"ok_rate":' .. string.format("%.1f", c.ok / seconds),
    '"ok":' .. c.ok,
    '"busy":' .. c.busy,
    '"refused":' .. c.refused,
    '"lost":' .. c.lost,
    '"visits":' .. c.visits,
    '"visits_per_s":' .. string.format("%.1f", c.visits / seconds),
    '"p50_ms":' .. string.format("%.3f", latency:percentile(50) / 1000),
    '"p90_ms":' .. string.format("%.3f", latency:percentile(90) / 1000),
    '"p99_ms":' .. string.format("%.3f", latency:percentile(99) / 1000),
    '"max_ms":' .. string.format("%.3f", latency.max / 1000),
    string.format('"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}',
      e.connect, e.read, e.write, e.status, e.timeout),
    '"threads":' .. #threads,
    '"sha256":' .. json_string(impl),
    '"first_refusal":' .. json_string(first),
  }
  io.write("WRK_JSON {" .. table.concat(fields, ",") .. "}\n")
end

-- Each thread's value of a global, for done() hooks of the scenarios.
function M.each_thread(name)
  local values = {}
  for _, thread in ipairs(threads) do
    values[#values + 1] = thread:get(name)
  end
  return values
end

return M
