-- Voids: an authorization can be cancelled (compensation after a timeout).
-- A void that arrives before its authorization leaves a VOIDED row, so the
-- late authorization is refused instead of charging.
ALTER TABLE payment.authorizations DROP CONSTRAINT authorizations_status_check;
ALTER TABLE payment.authorizations
    ADD CONSTRAINT authorizations_status_check CHECK (status IN ('AUTHORIZED', 'DECLINED', 'VOIDED')),
    ADD COLUMN voided_at timestamptz;
