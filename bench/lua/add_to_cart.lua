-- POST /api/v1/carts/{id}/items: one unit of a random in-stock SKU into a random anonymous
-- cart (BENCH_CARTS: "id token" lines; BENCH_SKUS: one SKU a line), as a shopper would.
local carts, skus = {}, {}

function init(args)
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)") or "0", 16) % 100000)
  for line in io.lines(os.getenv("BENCH_CARTS")) do
    local id, token = line:match("^(%S+) (%S+)$")
    carts[#carts + 1] = { id = id, token = token }
  end
  for line in io.lines(os.getenv("BENCH_SKUS")) do
    skus[#skus + 1] = line
  end
end

function request()
  local cart = carts[math.random(1, #carts)]
  local body = '{"sku":"' .. skus[math.random(1, #skus)] .. '","quantity":1}'
  local headers = { ["Content-Type"] = "application/json", ["X-Cart-Token"] = cart.token }
  return wrk.format("POST", "/api/v1/carts/" .. cart.id .. "/items", headers, body)
end
