-- page: one page of a list, in name order. Each record comes back as one
-- string, its fields' values in the order of ARGV[5..] joined by the unit
-- separator (\31): one reply per record instead of one per field.
-- KEYS: names (the name index)
-- ARGV: min, max (ZRANGEBYLEX bounds), count (0: all), meta key prefix, field...
local names
if ARGV[3] == '0' then
  names = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2])
else
  names = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
end
local fields = {}
for i = 5, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
local out = {}
for i, name in ipairs(names) do
  local vals = redis.call('HMGET', ARGV[4] .. name, unpack(fields))
  if vals[1] then
    for j = 1, #vals do
      if not vals[j] then
        vals[j] = ''
      end
    end
    out[#out + 1] = name
    out[#out + 1] = table.concat(vals, '\31')
  else
    out[#out + 1] = name
    out[#out + 1] = false
  end
end
return out
