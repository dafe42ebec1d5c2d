-- A stablecoin's depeg basis per minute: its price on a centralised venue (e.g. USDe/USDT on Binance) against the peg and against the on-chain pool price.
-- param: asset text USDE the stablecoin (base asset of the venue's pair)
-- param: venue text binance the centralised venue
-- param: peg number 1.0 the peg, in the quote asset
-- param: start timestamp null window start, UTC (inclusive)
-- param: end timestamp null window end, UTC (exclusive)
-- param: step duration 1m bucket width
--
-- close/low: the venue's last and lowest price in the bucket (trades, else the finest bars).
-- basis_vs_peg_pct = close / peg - 1; low_vs_peg_pct = low / peg - 1 (%).
-- pool_price: the last on-chain pool price (prices with price_type or market 'pool', oriented as
-- quote per asset) at or before the bucket's end; pool_ts says when. basis_vs_pool_pct =
-- close / pool_price - 1: the venue-specific part of the depeg. If several pools exist, one is used.
SELECT ts, venue, symbol, open, high, low, close, quote_volume, source_table,
       basis_vs_peg_pct, low_vs_peg_pct, pool_venue, pool_symbol, pool_ts, pool_price,
       pool_vs_peg_pct, basis_vs_pool_pct, low_vs_pool_pct
FROM depeg_series($start, $end, $step, $asset, $venue, $peg)
ORDER BY venue, symbol, ts;
