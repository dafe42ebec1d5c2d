-- Table macros shared by the named queries; created at connect time, before the session is locked.
-- Windows are half-open [t0, t1); a NULL bound means unbounded. All times are UTC (session zone).

CREATE MACRO _lo(t) AS coalesce(CAST(t AS TIMESTAMPTZ), TIMESTAMPTZ '-infinity');
CREATE MACRO _hi(t) AS coalesce(CAST(t AS TIMESTAMPTZ), TIMESTAMPTZ 'infinity');
-- '1m' -> 60, '5m' -> 300, '1h' -> 3600, '1d' -> 86400 (bar intervals as Binance writes them).
CREATE MACRO _interval_s(i) AS
    TRY_CAST(regexp_extract(i, '^(\d+)', 1) AS BIGINT)
    * CASE right(i, 1) WHEN 's' THEN 1 WHEN 'm' THEN 60 WHEN 'h' THEN 3600 WHEN 'd' THEN 86400
                       WHEN 'w' THEN 604800 ELSE NULL END;
CREATE MACRO _asset(sym) AS upper(split_part(sym, '/', 1));
-- Does an instrument match a user's list? Items may be a symbol (BTC/USDT:USDT), the symbol without
-- separators (BTCUSDT) or a base asset (BTC), any case. A NULL list matches everything.
CREATE MACRO _matches(lst, sym) AS
    lst IS NULL OR list_has_any(list_transform(lst, lambda x: upper(x)),
        [upper(sym), upper(replace(split_part(sym, ':', 1), '/', '')), _asset(sym)]);

-- Trades bucketed by `step`: OHLCV, VWAP, taker buy/sell, liquidation-tagged volume.
-- Open/close are the first/last trade by (ts, numeric trade id, event id), so ties at one
-- microsecond resolve in the exchange's own sequence, deterministically.
CREATE MACRO trade_bars(t0, t1, step) AS TABLE
SELECT
    time_bucket(step, ts) AS ts, venue, market, symbol,
    arg_min(price, (ts, TRY_CAST(trade_id AS BIGINT), event_id)) AS open,
    max(price) AS high,
    min(price) AS low,
    arg_max(price, (ts, TRY_CAST(trade_id AS BIGINT), event_id)) AS close,
    sum(amount) AS volume,
    sum(quote_amount) AS quote_volume,
    sum(quote_amount) / nullif(sum(amount), 0) AS vwap,
    count(*) AS trade_count,
    coalesce(sum(amount) FILTER (WHERE side = 'buy'), 0) AS taker_buy_volume,
    coalesce(sum(amount) FILTER (WHERE side = 'sell'), 0) AS taker_sell_volume,
    coalesce(sum(quote_amount) FILTER (WHERE side = 'buy'), 0) AS taker_buy_quote,
    coalesce(sum(quote_amount) FILTER (WHERE side = 'sell'), 0) AS taker_sell_quote,
    count(*) FILTER (WHERE is_liquidation IS NOT NULL) AS liq_tagged_trades,
    coalesce(sum(quote_amount) FILTER (WHERE is_liquidation), 0) AS liquidation_quote
FROM trades
WHERE ts >= _lo(t0) AND ts < _hi(t1)
GROUP BY ALL;

-- One price series per (instrument, price_type), bucketed by `step`, from the best source present:
-- trades, else bars (only the finest interval of that series), else point prices (mark, index, pool...).
CREATE MACRO price_series(t0, t1, step) AS TABLE
WITH tb AS (
    SELECT ts, venue, market, symbol, 'trade' AS price_type, open, high, low, close,
           quote_volume, trade_count, 'trades' AS source_table
    FROM trade_bars(t0, t1, step)
), bsel AS (
    SELECT *, _interval_s("interval") AS isec,
           min(_interval_s("interval")) OVER (PARTITION BY venue, market, symbol, price_type) AS finest
    FROM bars WHERE ts >= _lo(t0) AND ts < _hi(t1)
), bb AS (
    SELECT time_bucket(step, ts) AS ts, venue, market, symbol, price_type,
           arg_min(open, ts) AS open, max(high) AS high, min(low) AS low, arg_max(close, ts) AS close,
           sum(coalesce(quote_volume, volume * close)) AS quote_volume,
           sum(trade_count) AS trade_count, 'bars' AS source_table
    FROM bsel WHERE isec IS NOT DISTINCT FROM finest
    GROUP BY ALL
), pp AS (
    SELECT time_bucket(step, ts) AS ts, venue, market, symbol, price_type,
           arg_min(price, (ts, event_id)) AS open, max(price) AS high, min(price) AS low,
           arg_max(price, (ts, event_id)) AS close,
           CAST(NULL AS DOUBLE) AS quote_volume, CAST(NULL AS BIGINT) AS trade_count,
           'prices' AS source_table
    FROM prices WHERE ts >= _lo(t0) AND ts < _hi(t1)
    GROUP BY ALL
), u AS (
    SELECT * FROM tb UNION ALL BY NAME SELECT * FROM bb UNION ALL BY NAME SELECT * FROM pp
), ranked AS (
    SELECT *, min(CASE source_table WHEN 'trades' THEN 0 WHEN 'bars' THEN 1 ELSE 2 END)
                  OVER (PARTITION BY venue, market, symbol, price_type) AS best
    FROM u
)
SELECT ts, venue, market, symbol, price_type, open, high, low, close, quote_volume, trade_count, source_table
FROM ranked
WHERE CASE source_table WHEN 'trades' THEN 0 WHEN 'bars' THEN 1 ELSE 2 END = best;

-- Low, time of the low and drawdown from the price at `ref`, per (instrument, price_type) in [t0, t1).
-- Trades give the exact tick; bars and point prices are used for series without trades.
-- ref_price: the last price in the 15 minutes up to `ref`, else the first one at or after it.
-- Each source is aggregated on its own first (cheap), then the best source per series is kept.
CREATE MACRO instrument_lows(t0, t1, ref) AS TABLE
WITH p AS (
    SELECT coalesce(CAST(ref AS TIMESTAMPTZ), _lo(t0)) AS r_ts, _lo(t0) AS w_lo, _hi(t1) AS w_hi
), u AS (
    SELECT ts, venue, market, symbol, 'trade' AS price_type, 0 AS rank, price AS lo, price AS hi,
           price AS px_open, price AS px_close, (TRY_CAST(trade_id AS BIGINT), event_id) AS tie
    FROM trades, p
    WHERE ts >= least(p.w_lo, p.r_ts - INTERVAL 15 MINUTE) AND ts < p.w_hi
    UNION ALL
    SELECT b.ts, b.venue, b.market, b.symbol, b.price_type, 1 AS rank, b.low, b.high, b.open, b.close,
           (NULL::BIGINT, b.event_id)
    FROM (SELECT *, min(_interval_s("interval")) OVER (PARTITION BY venue, market, symbol, price_type) AS finest
          FROM bars, p WHERE ts >= least(p.w_lo, p.r_ts - INTERVAL 15 MINUTE) AND ts < p.w_hi) b
    WHERE _interval_s(b."interval") IS NOT DISTINCT FROM b.finest
    UNION ALL
    SELECT ts, venue, market, symbol, price_type, 2 AS rank, price, price, price, price, (NULL::BIGINT, event_id)
    FROM prices, p
    WHERE ts >= least(p.w_lo, p.r_ts - INTERVAL 15 MINUTE) AND ts < p.w_hi
), agg AS (
    SELECT venue, market, symbol, price_type, rank,
        any_value(p.r_ts) AS ref_ts,
        coalesce(arg_max(px_close, (ts, tie)) FILTER (WHERE ts <= p.r_ts),
                 arg_min(px_open, (ts, tie)) FILTER (WHERE ts >= p.r_ts)) AS ref_price,
        min(lo) FILTER (WHERE ts >= p.w_lo) AS low,
        arg_min(ts, (lo, ts)) FILTER (WHERE ts >= p.w_lo) AS low_ts,
        max(hi) FILTER (WHERE ts >= p.w_lo) AS high,
        arg_max(px_close, (ts, tie)) FILTER (WHERE ts >= p.w_lo) AS close,
        count(*) FILTER (WHERE ts >= p.w_lo) AS n
    FROM u, p GROUP BY venue, market, symbol, price_type, rank
)
SELECT venue, market, symbol, _asset(symbol) AS asset, price_type,
       CASE rank WHEN 0 THEN 'trades' WHEN 1 THEN 'bars' ELSE 'prices' END AS source_table, ref_ts, ref_price,
       low, low_ts, (low / ref_price - 1) * 100 AS drawdown_pct, high, close,
       (close / low - 1) * 100 AS rebound_pct, n
FROM agg
WHERE n > 0
QUALIFY rank = min(rank) OVER (PARTITION BY venue, market, symbol, price_type);

-- Every depth_bands sample in [t0, t1) with its quality flags:
--   crossed: a bid band whose average price is above the lowest ask band price of the same sample;
--   stale:   a band whose depth and notional stay exactly the same for >= stale_n consecutive samples
--            while the mid estimate moves by more than stale_move (relative) over that run.
-- The mid estimate is the midpoint of the innermost bid and ask bands (it is itself distorted while a
-- band is crossed: that is why such a band is flagged and left out, not repaired).
CREATE MACRO depth_band_samples(t0, t1, stale_n, stale_move) AS TABLE
WITH b AS (
    SELECT ts, venue, market, symbol, band_pct, depth, notional, notional / nullif(depth, 0) AS price
    FROM depth_bands
    WHERE ts >= _lo(t0) - INTERVAL 6 HOUR AND ts < _hi(t1)
), q AS (
    SELECT ts, venue, market, symbol,
           arg_max(price, band_pct) FILTER (WHERE band_pct < 0) AS bid_inner,
           arg_min(price, band_pct) FILTER (WHERE band_pct > 0) AS ask_inner,
           min(price) FILTER (WHERE band_pct > 0) AS ask_lowest,
           max(price) FILTER (WHERE band_pct < 0) AS bid_highest
    FROM b GROUP BY ALL
), j AS (
    SELECT b.*, q.bid_inner, q.ask_inner, q.ask_lowest, (q.bid_inner + q.ask_inner) / 2 AS mid_est,
           coalesce(q.bid_highest > q.ask_lowest, false) AS sample_crossed
    FROM b JOIN q USING (ts, venue, market, symbol)
), c AS (
    SELECT *, CASE WHEN depth IS NOT DISTINCT FROM lag(depth) OVER w
                    AND notional IS NOT DISTINCT FROM lag(notional) OVER w THEN 0 ELSE 1 END AS changed
    FROM j WINDOW w AS (PARTITION BY venue, market, symbol, band_pct ORDER BY ts)
), r AS (
    SELECT *, sum(changed) OVER (PARTITION BY venue, market, symbol, band_pct ORDER BY ts
                                 ROWS UNBOUNDED PRECEDING) AS run_id
    FROM c
), s AS (
    SELECT *, count(*) OVER rw AS run_len,
           (max(mid_est) OVER rw - min(mid_est) OVER rw) / nullif(avg(mid_est) OVER rw, 0) AS run_mid_move
    FROM r WINDOW rw AS (PARTITION BY venue, market, symbol, band_pct, run_id)
)
SELECT ts, venue, market, symbol, band_pct, depth, notional, price, mid_est, ask_lowest, sample_crossed,
       run_len, run_mid_move,
       coalesce(band_pct < 0 AND price > ask_lowest, false) AS crossed,
       coalesce(run_len >= stale_n AND run_mid_move > stale_move, false) AS stale
FROM s
WHERE ts >= _lo(t0);

-- Bid and ask depth within `band` % of the mid per `step`, from depth_bands (cumulative bands; the
-- widest band not beyond `band` is used) and from book_snapshots (levels within band % of the
-- snapshot's mid). Flagged samples are left out of the averages and counted.
CREATE MACRO depth_minutes(t0, t1, step, band, stale_n, stale_move) AS TABLE
WITH chosen AS (
    SELECT venue, market, symbol,
           min(band_pct) FILTER (WHERE band_pct < 0 AND band_pct >= -band) AS bid_band,
           max(band_pct) FILTER (WHERE band_pct > 0 AND band_pct <= band) AS ask_band
    FROM (SELECT DISTINCT venue, market, symbol, band_pct FROM depth_bands) GROUP BY ALL
), ds AS (
    SELECT d.*, CASE WHEN d.band_pct < 0 THEN 'bid' ELSE 'ask' END AS side,
           CASE WHEN d.crossed AND d.stale THEN 'crossed+stale' WHEN d.crossed THEN 'crossed'
                WHEN d.stale THEN 'stale' END AS flag
    FROM depth_band_samples(t0, t1, stale_n, stale_move) d
    JOIN chosen c ON d.venue = c.venue AND d.market = c.market AND d.symbol = c.symbol
                 AND (d.band_pct = c.bid_band OR d.band_pct = c.ask_band)
), from_bands AS (
    SELECT time_bucket(step, ts) AS ts, venue, market, symbol, 'depth_bands' AS source_table,
        max(abs(band_pct)) AS band_pct,
        avg(mid_est) FILTER (WHERE NOT sample_crossed) AS mid,
        avg(notional) FILTER (WHERE side = 'bid' AND flag IS NULL) AS bid_notional,
        avg(notional) FILTER (WHERE side = 'ask' AND flag IS NULL) AS ask_notional,
        avg(depth) FILTER (WHERE side = 'bid' AND flag IS NULL) AS bid_depth,
        avg(depth) FILTER (WHERE side = 'ask' AND flag IS NULL) AS ask_depth,
        count(DISTINCT ts) AS samples,
        count(*) FILTER (WHERE side = 'bid' AND flag IS NOT NULL) AS bid_flagged,
        count(*) FILTER (WHERE side = 'ask' AND flag IS NOT NULL) AS ask_flagged,
        string_agg(DISTINCT flag, ',' ORDER BY flag) FILTER (WHERE side = 'bid') AS bid_flag,
        string_agg(DISTINCT flag, ',' ORDER BY flag) FILTER (WHERE side = 'ask') AS ask_flag
    FROM ds GROUP BY ALL
), snap AS (
    SELECT ts, venue, market, symbol, side, price, amount,
           max(price) FILTER (WHERE side = 'bid') OVER k AS best_bid,
           min(price) FILTER (WHERE side = 'ask') OVER k AS best_ask
    FROM book_snapshots
    WHERE ts >= _lo(t0) AND ts < _hi(t1)
    WINDOW k AS (PARTITION BY ts, venue, market, symbol)
), snap_s AS (
    SELECT ts, venue, market, symbol, (best_bid + best_ask) / 2 AS mid, best_bid >= best_ask AS crossed,
        sum(price * amount) FILTER (WHERE side = 'bid' AND price >= (best_bid + best_ask) / 2 * (1 - band / 100)) AS bid_notional,
        sum(price * amount) FILTER (WHERE side = 'ask' AND price <= (best_bid + best_ask) / 2 * (1 + band / 100)) AS ask_notional,
        sum(amount) FILTER (WHERE side = 'bid' AND price >= (best_bid + best_ask) / 2 * (1 - band / 100)) AS bid_depth,
        sum(amount) FILTER (WHERE side = 'ask' AND price <= (best_bid + best_ask) / 2 * (1 + band / 100)) AS ask_depth
    FROM snap GROUP BY ALL
), from_snaps AS (
    SELECT time_bucket(step, ts) AS ts, venue, market, symbol, 'book_snapshots' AS source_table,
        CAST(band AS DOUBLE) AS band_pct,
        avg(mid) FILTER (WHERE NOT crossed) AS mid,
        avg(coalesce(bid_notional, 0)) FILTER (WHERE NOT crossed) AS bid_notional,
        avg(coalesce(ask_notional, 0)) FILTER (WHERE NOT crossed) AS ask_notional,
        avg(coalesce(bid_depth, 0)) FILTER (WHERE NOT crossed) AS bid_depth,
        avg(coalesce(ask_depth, 0)) FILTER (WHERE NOT crossed) AS ask_depth,
        count(*) AS samples,
        count(*) FILTER (WHERE crossed) AS bid_flagged,
        count(*) FILTER (WHERE crossed) AS ask_flagged,
        CASE WHEN bool_or(crossed) THEN 'crossed' END AS bid_flag,
        CASE WHEN bool_or(crossed) THEN 'crossed' END AS ask_flag
    FROM snap_s GROUP BY ALL
)
SELECT * FROM from_bands UNION ALL BY NAME SELECT * FROM from_snaps;

-- The depeg basis of a stablecoin per `step`: its last trade/bar price on a centralised venue against
-- the peg and against an on-chain pool price (as of the end of the bucket).
CREATE MACRO depeg_series(t0, t1, step, asset_, venue_, peg) AS TABLE
WITH cex AS (
    SELECT ts, venue, market, symbol, open, low, high, close, quote_volume, source_table
    FROM price_series(t0, t1, step)
    WHERE price_type = 'trade' AND _asset(symbol) = upper(asset_) AND venue = venue_ AND market = 'spot'
), pool AS (
    SELECT ts, venue AS pool_venue, symbol AS pool_symbol,
           CASE WHEN _asset(symbol) = upper(asset_) THEN price ELSE 1 / price END AS pool_price
    FROM prices
    WHERE (price_type = 'pool' OR market = 'pool')
      AND (_asset(symbol) = upper(asset_) OR upper(split_part(split_part(symbol, '/', 2), ':', 1)) = upper(asset_))
      AND ts >= _lo(t0) - INTERVAL 1 HOUR AND ts < _hi(t1) + INTERVAL 1 HOUR
)
SELECT c.ts, c.venue, c.symbol, c.open, c.low, c.high, c.close, c.quote_volume, c.source_table,
       (c.close / peg - 1) * 100 AS basis_vs_peg_pct,
       (c.low / peg - 1) * 100 AS low_vs_peg_pct,
       p.pool_venue, p.pool_symbol, p.ts AS pool_ts, p.pool_price,
       (p.pool_price / peg - 1) * 100 AS pool_vs_peg_pct,
       (c.close / p.pool_price - 1) * 100 AS basis_vs_pool_pct,
       (c.low / p.pool_price - 1) * 100 AS low_vs_pool_pct
FROM cex c ASOF LEFT JOIN pool p ON p.ts < c.ts + step;
