-- Taker imbalance and liquidation-tagged volume per minute and instrument, with the source's coverage caveat.
-- param: start timestamp null window start, UTC (inclusive)
-- param: end timestamp null window end, UTC (exclusive)
-- param: step duration 1m bucket width
-- param: venue text null only this venue
-- param: symbols list null only these instruments (symbol, BTCUSDT-style, or base asset)
--
-- imbalance = (taker buy - taker sell) / (taker buy + taker sell) in quote terms, from -1 (all
-- sells) to +1. liq_trades_quote: trades the source itself tags as liquidations; liquidations_quote:
-- rows of the liquidations table (long_liq_quote = forced sells closing longs). coverage says how far
-- to trust these numbers: Binance's forceOrder stream keeps at most one liquidation per symbol per
-- second (a lower bound); most trade feeds (Tardis, Binance archives) do not tag liquidations at all.
WITH t AS (
    SELECT ts, venue, market, symbol, quote_volume, taker_buy_quote, taker_sell_quote, trade_count,
           liq_tagged_trades, liquidation_quote
    FROM trade_bars($start, $end, $step)
), l AS (
    SELECT time_bucket($step, ts) AS ts, venue, market, symbol,
           sum(quote_amount) AS liquidations_quote, count(*) AS liquidations,
           coalesce(sum(quote_amount) FILTER (WHERE side = 'sell'), 0) AS long_liq_quote,
           coalesce(sum(quote_amount) FILTER (WHERE side = 'buy'), 0) AS short_liq_quote
    FROM liquidations
    WHERE ts >= coalesce(CAST($start AS TIMESTAMPTZ), TIMESTAMPTZ '-infinity')
      AND ts < coalesce(CAST($end AS TIMESTAMPTZ), TIMESTAMPTZ 'infinity')
    GROUP BY ALL
), j AS (
    SELECT * FROM t FULL OUTER JOIN l USING (ts, venue, market, symbol)
)
SELECT ts, venue, market, symbol,
       coalesce(quote_volume, 0) AS quote_volume, coalesce(trade_count, 0) AS trade_count,
       coalesce(taker_buy_quote, 0) AS taker_buy_quote, coalesce(taker_sell_quote, 0) AS taker_sell_quote,
       (taker_buy_quote - taker_sell_quote) / nullif(taker_buy_quote + taker_sell_quote, 0) AS imbalance,
       CASE WHEN coalesce(liq_tagged_trades, 0) > 0 THEN liquidation_quote END AS liq_trades_quote,
       coalesce(liquidations_quote, 0) AS liquidations_quote, coalesce(liquidations, 0) AS liquidations,
       coalesce(long_liq_quote, 0) AS long_liq_quote, coalesce(short_liq_quote, 0) AS short_liq_quote,
       concat_ws('; ',
         CASE WHEN coalesce(liq_tagged_trades, 0) = 0 AND coalesce(trade_count, 0) > 0
              THEN 'trades not tagged as liquidations by the source' END,
         CASE WHEN venue = 'binance' AND market IN ('perp', 'future')
              THEN 'Binance forceOrder: at most 1 liquidation per symbol per second (lower bound)' END,
         CASE WHEN venue = 'hyperliquid' THEN 'Hyperliquid fills: liquidation and ADL flags as recorded' END,
         CASE WHEN coalesce(liquidations, 0) = 0 THEN 'no liquidation rows in the lake for this minute' END
       ) AS coverage
FROM j
WHERE ($venue IS NULL OR venue = $venue) AND _matches($symbols, symbol)
ORDER BY venue, market, symbol, ts;
