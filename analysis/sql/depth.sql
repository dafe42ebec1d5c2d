-- Bid and ask notional within x % of the mid per minute, from depth_bands or book_snapshots, with stale and crossed bands flagged and left out.
-- param: start timestamp null window start, UTC (inclusive)
-- param: end timestamp null window end, UTC (exclusive)
-- param: step duration 1m bucket width
-- param: band_pct number 1 distance from the mid, in % (depth_bands: the widest band not beyond it)
-- param: stale_n integer 5 a band unchanged (depth and notional) for this many consecutive samples ...
-- param: stale_move number 0.001 ... while the mid estimate moves by more than this (relative) is stale
-- param: venue text null only this venue
-- param: symbols list null only these instruments (symbol, BTCUSDT-style, or base asset)
--
-- bid_notional / ask_notional are averages over the bucket's clean samples (quote currency);
-- *_depth in the base asset. A bid band priced above the lowest ask band ("crossed") or a stale band
-- is excluded; bid_flagged / ask_flagged count the excluded samples and bid_flag / ask_flag say why.
-- A bucket whose samples were all flagged has a NULL notional: unknown, not zero. Example: Binance's
-- BTCUSDT USDⓈ-M bookDepth file carries a stale ~US$2.14M bid at ~121,363 from 15:30:42 on.
-- The mid is the midpoint of the innermost clean bands (NULL when they cross).
SELECT ts, venue, market, symbol, source_table, band_pct, mid,
       bid_notional, ask_notional, bid_depth, ask_depth,
       samples, bid_flagged, ask_flagged, bid_flag, ask_flag
FROM depth_minutes($start, $end, $step, $band_pct, $stale_n, $stale_move)
WHERE ($venue IS NULL OR venue = $venue) AND _matches($symbols, symbol)
ORDER BY venue, market, symbol, source_table, ts;
