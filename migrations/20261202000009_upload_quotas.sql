-- Per-token quotas on uploads and holds, kept here so that every coordinator replica
-- counts the same usage.

-- Bytes each token uploaded, per minute: the hourly upload quota sums the last 60
-- minutes (a handful of rows, however many blobs), and a minute's row frees its bytes an
-- hour after the minute began. An upload is charged the size it declares before its
-- first byte is stored; one that ends early is refunded what never arrived.
CREATE TABLE upload_usage (
    token_id  uuid NOT NULL REFERENCES tokens (id),
    minute    timestamptz NOT NULL,
    bytes     bigint NOT NULL,
    PRIMARY KEY (token_id, minute),
    CONSTRAINT upload_usage_bytes_nonnegative CHECK (bytes >= 0)
);

-- Charges `asked` bytes to `token` if its last hour's uploads plus them stay within
-- `quota`. Returns the minute charged (NULL when refused), the bytes uploaded in the last
-- hour before this charge, and, when refused, the moment enough of them age out for the
-- charge to fit (NULL too if `asked` alone exceeds the quota). The token's advisory lock
-- makes check and charge one step on every replica: two uploads never both take the
-- last bytes of a quota.
CREATE FUNCTION charge_upload(token uuid, asked bigint, quota bigint)
RETURNS TABLE (charged_minute timestamptz, uploaded bigint, frees_at timestamptz)
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('heirloom upload quota'), hashtext(token::text));
    DELETE FROM upload_usage u
     WHERE u.token_id = token AND u.minute <= now() - interval '1 hour';
    SELECT coalesce(sum(u.bytes), 0)::bigint INTO uploaded
      FROM upload_usage u WHERE u.token_id = token;
    IF uploaded + asked <= quota THEN
        charged_minute := date_trunc('minute', now());
        INSERT INTO upload_usage AS u (token_id, minute, bytes)
        VALUES (token, charged_minute, asked)
        ON CONFLICT (token_id, minute) DO UPDATE SET bytes = u.bytes + excluded.bytes;
    ELSIF asked <= quota THEN
        -- Minutes age out oldest first: the first whose leaving makes room.
        SELECT aged.minute + interval '1 hour' INTO frees_at
          FROM (SELECT u.minute, sum(u.bytes) OVER (ORDER BY u.minute) AS gone
                  FROM upload_usage u WHERE u.token_id = token) aged
         WHERE uploaded - aged.gone + asked <= quota
         ORDER BY aged.minute
         LIMIT 1;
    END IF;
    RETURN NEXT;
END
$$;

-- A blob may now be held by several tokens, each hold counted against its token's
-- quota: one row per token and blob. Holds made before this have no token; they end
-- within the hour like any other.
ALTER TABLE blob_holds DROP CONSTRAINT blob_holds_pkey;
ALTER TABLE blob_holds ADD COLUMN token_id uuid REFERENCES tokens (id);
CREATE UNIQUE INDEX blob_holds_token_blob ON blob_holds (token_id, sha256);
-- Counting a token's live holds reads only this index.
CREATE INDEX blob_holds_token_until ON blob_holds (token_id, held_until);
