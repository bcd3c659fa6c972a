-- The W3C trace context of the work that wrote each row. The relay sends it
-- as the Kafka header `traceparent`, so one order's saga is one trace.
-- Nullable: rows written before this column existed, or with tracing off,
-- go out without the header.
ALTER TABLE payment.outbox ADD COLUMN traceparent text;
