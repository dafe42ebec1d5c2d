-- That night's events (news, venue statements, data artifacts) with their sources, in a window.
-- param: start timestamp null window start, UTC (inclusive; windows overlapping it are included)
-- param: end timestamp null window end, UTC (exclusive)
-- param: kind text null only this kind (news, venue_statement, venue_event, market, liquidations, onchain, analysis_window, data_artifact)
--
-- A marker with end_ts is a window (e.g. Binance's compensation window 21:36-22:16). When the lake
-- holds no markers, connect() shows the ones shipped in data/markers.csv (source says which).
SELECT ts, end_ts, kind, label, source_url, source
FROM markers
WHERE coalesce(end_ts, ts) >= coalesce(CAST($start AS TIMESTAMPTZ), TIMESTAMPTZ '-infinity')
  AND ts < coalesce(CAST($end AS TIMESTAMPTZ), TIMESTAMPTZ 'infinity')
  AND ($kind IS NULL OR kind = $kind)
ORDER BY ts, end_ts NULLS FIRST, label;
