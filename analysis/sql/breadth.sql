-- Breadth: how many instruments fell more than 20 / 50 / 80 % from the reference price to their low in a window, per venue and overall.
-- param: start timestamp required window start, UTC (inclusive)
-- param: end timestamp required window end, UTC (exclusive)
-- param: ref timestamp null reference time (default: start)
-- param: market text null only this market (spot, perp, ...)
-- param: price_type text trade price series (trade, mark, index, ...)
--
-- Drawdown = low / ref_price - 1, per instrument (see the lows query). The row with venue 'ALL'
-- counts every instrument once. worst lists the three deepest instruments.
WITH l AS (
    SELECT * FROM instrument_lows($start, $end, $ref)
    WHERE price_type = $price_type AND ($market IS NULL OR market = $market) AND ref_price IS NOT NULL
)
SELECT coalesce(venue, 'ALL') AS venue,
       count(*) AS instruments,
       count(*) FILTER (WHERE drawdown_pct <= -20) AS fell_20,
       count(*) FILTER (WHERE drawdown_pct <= -50) AS fell_50,
       count(*) FILTER (WHERE drawdown_pct <= -80) AS fell_80,
       median(drawdown_pct) AS median_drawdown_pct,
       min(drawdown_pct) AS worst_drawdown_pct,
       array_to_string(list(venue || ':' || symbol || ' ' || CAST(round(drawdown_pct, 1) AS VARCHAR) || '%'
                            ORDER BY drawdown_pct, venue, symbol)[1:3], ', ') AS worst
FROM l
GROUP BY GROUPING SETS ((venue), ())
ORDER BY venue = 'ALL' OR venue IS NULL, venue;
