-- GET /items/<id> with a random id in 1..BENCH_ITEMS (default 100000): primary-key reads
-- spread over the whole table instead of one hot row.
local n = tonumber(os.getenv("BENCH_ITEMS") or "100000")

function init(args)
  -- each wrk thread has its own Lua state: seed each one differently
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)") or "0", 16) % 100000)
end

function request()
  return wrk.format("GET", "/items/" .. math.random(1, n))
end
