-- One asset's lows and wicks across venues side by side, with each venue's deviation from the median of the others.
-- param: start timestamp required window start, UTC (inclusive)
-- param: end timestamp required window end, UTC (exclusive)
-- param: ref timestamp null reference time for the wick depth (default: start)
-- param: asset text null base asset (ATOM, AVAX, ...; default: every asset seen on two or more venues)
-- param: price_type text trade price series to compare (trade, mark, index, ...)
--
-- One row per asset and instrument (e.g. AVAX on Binance COIN-M, Coinbase and Gemini), sorted by
-- asset then low. wick_pct = low / ref_price - 1 (%). others_median_low is the median low of the
-- asset's OTHER instruments; low_vs_others_pct = low / others_median_low - 1 (%): how much deeper
-- (negative) or shallower this venue's wick went than elsewhere. Prices are compared as quoted
-- (USD, USDT and USDC taken as equal; check the quote column when they depeg).
WITH l AS (
    SELECT * FROM instrument_lows($start, $end, $ref)
    WHERE price_type = $price_type AND ($asset IS NULL OR asset = upper($asset))
), multi AS (
    SELECT asset FROM l GROUP BY asset HAVING count(DISTINCT venue) >= 2 OR $asset IS NOT NULL
), x AS (
    SELECT l.*,
        (SELECT median(o.low) FROM l o
         WHERE o.asset = l.asset AND NOT (o.venue = l.venue AND o.market = l.market AND o.symbol = l.symbol)) AS others_median_low,
        (SELECT median(o.drawdown_pct) FROM l o
         WHERE o.asset = l.asset AND NOT (o.venue = l.venue AND o.market = l.market AND o.symbol = l.symbol)) AS others_median_wick_pct
    FROM l JOIN multi USING (asset)
)
SELECT asset, venue, market, symbol, upper(split_part(split_part(symbol, '/', 2), ':', 1)) AS quote,
       ref_price, low, low_ts, drawdown_pct AS wick_pct, close, rebound_pct,
       others_median_low, (low / others_median_low - 1) * 100 AS low_vs_others_pct,
       others_median_wick_pct, drawdown_pct - others_median_wick_pct AS wick_vs_others_pp,
       source_table, n
FROM x
ORDER BY asset, low / ref_price, venue, market, symbol;
