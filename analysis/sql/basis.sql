-- Basis between two price series per minute: perp vs mark or index, spot vs perp, venue vs venue, or a series vs a constant peg.
-- param: a_symbol text required leg A: unified symbol (e.g. BTC/USDT:USDT)
-- param: a_venue text null leg A venue (default: any)
-- param: a_market text null leg A market (default: any)
-- param: a_price_type text trade leg A price type (trade, mark, index, premium, pool, ...)
-- param: b_symbol text null leg B symbol (default: A's symbol)
-- param: b_venue text null leg B venue (default: A's venue)
-- param: b_market text null leg B market (default: A's market)
-- param: b_price_type text null leg B price type (default: mark)
-- param: b_const number null compare A with this constant instead of a leg B (e.g. 1.0 for a stablecoin)
-- param: start timestamp null window start, UTC (inclusive)
-- param: end timestamp null window end, UTC (exclusive)
-- param: step duration 1m bucket width
--
-- Each leg's price in a bucket is its last print (trades, else the finest bars, else point prices).
-- basis_pct = a_close / b_close - 1 (%); low_basis_pct = a_low / b_close - 1 (%) shows the wick
-- against the other leg's close. Leg B is carried forward from its last print (ASOF) so a sparse leg
-- still gives a basis every bucket; b_ts says when B last printed.
-- Examples: perp vs mark: a_symbol=BTC/USDT:USDT b_price_type=mark; spot vs perp:
-- a_symbol=BTC/USDT b_symbol=BTC/USDT:USDT b_market=perp b_price_type=trade; peg: a_symbol=USDE/USDT b_const=1.
WITH s AS (SELECT * FROM price_series($start - INTERVAL 1 HOUR, $end, $step)),
a AS (
    SELECT *, coalesce($b_venue, venue) AS want_venue, coalesce($b_market, market) AS want_market FROM s
    WHERE symbol = $a_symbol AND ($a_venue IS NULL OR venue = $a_venue)
      AND ($a_market IS NULL OR market = $a_market) AND price_type = $a_price_type
      AND ts >= coalesce(CAST($start AS TIMESTAMPTZ), TIMESTAMPTZ '-infinity')
), b AS (
    SELECT * FROM s
    WHERE $b_const IS NULL
      AND symbol = coalesce($b_symbol, $a_symbol)
      AND ($b_venue IS NULL OR venue = $b_venue) AND ($b_market IS NULL OR market = $b_market)
      AND price_type = coalesce($b_price_type, 'mark')
)
SELECT a.ts, a.venue AS a_venue, a.market AS a_market, a.symbol AS a_symbol, a.price_type AS a_price_type,
       a.close AS a_close, a.low AS a_low,
       coalesce(b.venue, 'constant') AS b_venue, b.market AS b_market, b.symbol AS b_symbol,
       coalesce(b.price_type, 'constant') AS b_price_type, b.ts AS b_ts,
       coalesce(CAST($b_const AS DOUBLE), b.close) AS b_close,
       (a.close / coalesce(CAST($b_const AS DOUBLE), b.close) - 1) * 100 AS basis_pct,
       (a.close / coalesce(CAST($b_const AS DOUBLE), b.close) - 1) * 10000 AS basis_bps,
       (a.low / coalesce(CAST($b_const AS DOUBLE), b.close) - 1) * 100 AS low_basis_pct
FROM a ASOF LEFT JOIN b ON a.want_venue = b.venue AND a.want_market = b.market AND a.ts >= b.ts
ORDER BY a.venue, a.market, a.symbol, a.ts;
