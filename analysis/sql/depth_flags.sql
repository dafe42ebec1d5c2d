-- Which depth_bands samples are flagged (crossed or stale) and why, one row per flagged band sample.
-- param: start timestamp null window start, UTC (inclusive)
-- param: end timestamp null window end, UTC (exclusive)
-- param: stale_n integer 5 a band unchanged for this many consecutive samples ...
-- param: stale_move number 0.001 ... while the mid estimate moves more than this (relative) is stale
-- param: venue text null only this venue
-- param: symbols list null only these instruments
--
-- price is the band's average price (notional / depth); ask_lowest the lowest ask band price of the
-- same sample; run_len how many consecutive samples the band stayed identical.
SELECT ts, venue, market, symbol, band_pct, depth, notional, price, ask_lowest, mid_est, run_len, run_mid_move,
       crossed, stale
FROM depth_band_samples($start, $end, $stale_n, $stale_move)
WHERE (crossed OR stale) AND ($venue IS NULL OR venue = $venue) AND _matches($symbols, symbol)
ORDER BY venue, market, symbol, ts, band_pct;
