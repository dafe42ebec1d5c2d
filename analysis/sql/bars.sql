-- OHLCV bars from trades: open, high, low, close, VWAP, volume, taker buy and sell volume per venue, market, symbol and interval.
-- param: start timestamp null window start, UTC (inclusive; default: all)
-- param: end timestamp null window end, UTC (exclusive; default: all)
-- param: interval duration 1m bar width (1s, 1m, 5m, 1h, ...)
-- param: venue text null only this venue (binance, coinbase, ...)
-- param: market text null only this market (spot, perp, future, ...)
-- param: symbol text null only this unified symbol (BTC/USDT, ATOM/USD:ATOM, ...)
--
-- Bars start at the bucket's start (ts). open/close are the first/last trade by (ts, numeric trade id, event id), so
-- equal timestamps resolve in the exchange's sequence. Volumes are in the base asset; *_quote in the
-- quote asset (USD notional for inverse contracts). vwap = quote_volume / volume.
-- liquidation_quote counts only trades the source tags as liquidations (liq_tagged_trades = how many
-- trades carry a tag at all: 0 means the source does not say).
SELECT ts, venue, market, symbol, $interval_label AS "interval",
       open, high, low, close, vwap, volume, quote_volume, trade_count,
       taker_buy_volume, taker_sell_volume, taker_buy_quote, taker_sell_quote,
       liq_tagged_trades, liquidation_quote
FROM trade_bars($start, $end, $interval)
WHERE ($venue IS NULL OR venue = $venue)
  AND ($market IS NULL OR market = $market)
  AND ($symbol IS NULL OR symbol = $symbol)
ORDER BY venue, market, symbol, ts;
