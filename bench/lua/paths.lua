-- GET a random path from the file named by BENCH_PATHS (one path a line), e.g. product pages
-- or search URLs prepared by the case's setup: many distinct keys, not one hot URL.
local paths = {}

function init(args)
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)") or "0", 16) % 100000)
  for line in io.lines(os.getenv("BENCH_PATHS")) do
    paths[#paths + 1] = line
  end
end

function request()
  return wrk.format("GET", paths[math.random(1, #paths)])
end
