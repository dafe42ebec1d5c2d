-- Low, time of the low and drawdown from a reference time, per instrument, in a window.
-- param: start timestamp required window start, UTC (inclusive)
-- param: end timestamp required window end, UTC (exclusive)
-- param: ref timestamp null reference time for the drawdown (default: start)
-- param: venue text null only this venue
-- param: market text null only this market
-- param: symbols list null only these instruments (symbols like ATOM/USD:ATOM, BTCUSDT, or base assets like ATOM; comma-separated)
-- param: price_type text null only this price type (trade, mark, index, pool, ...)
--
-- low_ts is the first time the low printed. ref_price is the last price at or before ref (looking
-- back 15 minutes), else the first price after it. drawdown_pct = low / ref_price - 1, in %.
-- rebound_pct = close / low - 1. A series with trades is measured on trades (exact ticks);
-- series without trades on bars (low_ts then has the bar's resolution) or point prices.
SELECT *
FROM instrument_lows($start, $end, $ref)
WHERE ($venue IS NULL OR venue = $venue)
  AND ($market IS NULL OR market = $market)
  AND ($price_type IS NULL OR price_type = $price_type)
  AND _matches($symbols, symbol)
ORDER BY asset, venue, market, symbol, price_type;
