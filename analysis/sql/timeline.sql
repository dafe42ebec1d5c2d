-- The minute-by-minute timeline of a window: per instrument its price and return, volume, taker imbalance, depth within 1 %, liquidations, plus the depeg basis and the markers of that minute.
-- param: start timestamp required window start, UTC (inclusive)
-- param: end timestamp required window end, UTC (exclusive)
-- param: step duration 1m row width
-- param: symbols list null instruments to show (symbols, BTCUSDT-style, or base assets; default: the `top` by volume)
-- param: venues list null only these venues
-- param: top integer 8 how many instruments when symbols is not given (highest traded quote volume in the window)
-- param: band_pct number 1 depth band, % from the mid
-- param: stale_n integer 5 stale-band rule (see the depth query)
-- param: stale_move number 0.001 stale-band rule (see the depth query)
-- param: depeg_asset text USDE stablecoin whose depeg basis is shown
-- param: depeg_venue text binance venue of that stablecoin's pair
--
-- One row per (minute, instrument), every minute of the window even when nothing traded (price is
-- then carried forward and volume is 0). ret_pct: close vs the previous minute's close; low_pct: the
-- minute's low vs the previous close (the wick); cum_ret_pct: vs the last price before start.
-- Instruments with depth but no trades take their price from the depth mid (source = 'depth').
-- depeg_pct / depeg_low_pct / depeg_vs_pool_pct and markers belong to the minute (same on each of its
-- rows). Markers: '●' a point event, '▶' a window opens, '◀' a window closes.
WITH ps AS (
    SELECT * FROM price_series(CAST($start AS TIMESTAMPTZ) - INTERVAL 1 HOUR, $end, $step)
    WHERE price_type = 'trade' AND ($venues IS NULL OR list_contains($venues, venue)) AND _matches($symbols, symbol)
), dm AS (
    SELECT * FROM depth_minutes(CAST($start AS TIMESTAMPTZ) - INTERVAL 1 HOUR, $end, $step, $band_pct, $stale_n, $stale_move)
    WHERE ($venues IS NULL OR list_contains($venues, venue)) AND _matches($symbols, symbol)
    QUALIFY row_number() OVER (PARTITION BY ts, venue, market, symbol ORDER BY source_table) = 1
), candidates AS (
    SELECT venue, market, symbol, coalesce(sum(quote_volume) FILTER (WHERE ts >= $start), 0) AS wvol FROM ps GROUP BY ALL
    UNION ALL
    SELECT DISTINCT venue, market, symbol, 0 AS wvol FROM dm
), inst AS (
    SELECT venue, market, symbol, max(wvol) AS wvol FROM candidates GROUP BY venue, market, symbol
    QUALIFY $symbols IS NOT NULL
         OR row_number() OVER (ORDER BY max(wvol) DESC, venue, market, symbol) <= $top
), inst1 AS (
    SELECT venue, market, symbol FROM inst
    UNION ALL SELECT NULL, NULL, NULL WHERE NOT EXISTS (SELECT 1 FROM inst)
), g AS (
    SELECT r.range AS ts, i.venue, i.market, i.symbol
    FROM range(time_bucket($step, CAST($start AS TIMESTAMPTZ)) - INTERVAL 1 HOUR, CAST($end AS TIMESTAMPTZ), $step) r
    CROSS JOIN inst1 i
), f AS (
    SELECT g.ts, g.venue, g.market, g.symbol,
           p.close, p.low, coalesce(p.quote_volume, 0) AS quote_volume,
           d.mid, d.bid_notional, d.ask_notional, d.bid_flag,
           CASE WHEN p.source_table IS NOT NULL THEN p.source_table WHEN d.mid IS NOT NULL THEN 'depth' END AS source,
           last_value(coalesce(p.close, d.mid) IGNORE NULLS) OVER w AS price
    FROM g
    LEFT JOIN ps p ON p.ts = g.ts AND p.venue = g.venue AND p.market = g.market AND p.symbol = g.symbol
    LEFT JOIN dm d ON d.ts = g.ts AND d.venue = g.venue AND d.market = g.market AND d.symbol = g.symbol
    WINDOW w AS (PARTITION BY g.venue, g.market, g.symbol ORDER BY g.ts ROWS UNBOUNDED PRECEDING)
), r AS (
    SELECT *, lag(price) OVER (PARTITION BY venue, market, symbol ORDER BY ts) AS prev_price FROM f
), r2 AS (
    SELECT *, first_value(prev_price) OVER (PARTITION BY venue, market, symbol ORDER BY ts) AS ref_price
    FROM r WHERE ts >= time_bucket($step, CAST($start AS TIMESTAMPTZ))
), tb AS (
    SELECT ts, venue, market, symbol, taker_buy_quote, taker_sell_quote, liq_tagged_trades, liquidation_quote
    FROM trade_bars($start, $end, $step)
), lq AS (
    SELECT time_bucket($step, ts) AS ts, venue, market, symbol, sum(quote_amount) AS liq_quote
    FROM liquidations WHERE ts >= $start AND ts < $end GROUP BY ALL
), dp AS (
    SELECT ts, min(basis_vs_peg_pct) AS depeg_pct, min(low_vs_peg_pct) AS depeg_low_pct,
           min(basis_vs_pool_pct) AS depeg_vs_pool_pct
    FROM depeg_series($start, $end, $step, $depeg_asset, $depeg_venue, 1.0) GROUP BY ts
), mk AS (
    SELECT m.ts AS minute, string_agg(x.txt, ' | ' ORDER BY x.at, x.txt) AS markers
    FROM (SELECT DISTINCT ts FROM g) m
    JOIN (
        SELECT ts AS at, CASE WHEN end_ts IS NULL THEN '● ' ELSE '▶ ' END || label AS txt FROM markers
        UNION ALL
        SELECT end_ts AS at, '◀ end: ' || label AS txt FROM markers WHERE end_ts IS NOT NULL
    ) x ON x.at >= m.ts AND x.at < m.ts + $step
    GROUP BY m.ts
)
SELECT r2.ts, r2.venue, r2.market, r2.symbol, r2.price, r2.source,
       (r2.price / r2.prev_price - 1) * 100 AS ret_pct,
       (r2.low / r2.prev_price - 1) * 100 AS low_pct,
       (r2.price / r2.ref_price - 1) * 100 AS cum_ret_pct,
       r2.quote_volume,
       (tb.taker_buy_quote - tb.taker_sell_quote) / nullif(tb.taker_buy_quote + tb.taker_sell_quote, 0) AS imbalance,
       r2.bid_notional AS bid_depth, r2.ask_notional AS ask_depth, r2.bid_flag AS depth_flag,
       coalesce(lq.liq_quote, 0) + CASE WHEN coalesce(tb.liq_tagged_trades, 0) > 0 THEN tb.liquidation_quote ELSE 0 END AS liq_quote,
       dp.depeg_pct, dp.depeg_low_pct, dp.depeg_vs_pool_pct,
       mk.markers
FROM r2
LEFT JOIN tb ON tb.ts = r2.ts AND tb.venue = r2.venue AND tb.market = r2.market AND tb.symbol = r2.symbol
LEFT JOIN lq ON lq.ts = r2.ts AND lq.venue = r2.venue AND lq.market = r2.market AND lq.symbol = r2.symbol
LEFT JOIN dp ON dp.ts = r2.ts
LEFT JOIN mk ON mk.minute = r2.ts
ORDER BY r2.ts, r2.venue, r2.market, r2.symbol;
