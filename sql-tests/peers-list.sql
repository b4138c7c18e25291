-- crsql_peers: one row per peer named by a stream (outbound `peer` or a
-- single `exclude_sites` site; inbound `from` or the sender of applied
-- packages), its positions, last_seen and expiry; crsql_forget_peer;
-- the peer-expiry-seconds setting; crsql_tracked_peers kept up to date.
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE t (id TEXT PRIMARY KEY NOT NULL, v);
SELECT crsql_as_crr('t');
INSERT INTO t VALUES ('a', 1), ('b', 2);
-- No streams, no peers.
SELECT count(*) FROM crsql_peers;
CREATE VIRTUAL TABLE to_p USING crsql_OutboundStream(peer = '0102030405060708090a0b0c0d0e0f10');
CREATE VIRTUAL TABLE to_q USING crsql_OutboundStream(exclude_sites = 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa');
CREATE VIRTUAL TABLE to_nobody USING crsql_OutboundStream();
CREATE VIRTUAL TABLE from_p USING crsql_InboundStream(from = '0102030405060708090a0b0c0d0e0f10');
SELECT hex(site_id), last_acked, last_applied, last_seen > 1700000000, expired FROM crsql_peers ORDER BY site_id;
INSERT INTO to_p(last_sent) VALUES ('[1,1]');
-- An older acknowledgement moves nothing back but still counts as seen.
INSERT INTO to_p(last_sent) VALUES ('[1,0]');
SELECT hex(site_id), last_acked, last_applied FROM crsql_peers ORDER BY site_id;
SELECT hex(site_id), version, seq, tag, event FROM crsql_tracked_peers ORDER BY site_id, event;
-- Expiry: the default is 30 days; 0 expires every peer at once.
SELECT crsql_config_get('peer-expiry-seconds');
SELECT crsql_config_set('peer-expiry-seconds', 0);
SELECT hex(site_id), expired FROM crsql_peers ORDER BY site_id;
SELECT crsql_config_set('peer-expiry-seconds', 3600);
SELECT hex(site_id), expired FROM crsql_peers ORDER BY site_id;
SELECT crsql_config_set('peer-expiry-seconds', -1);
SELECT crsql_config_set('peer-expiry-seconds', 'soon');
-- Forgetting a peer expires it at once (every one of its streams) until it is seen again.
SELECT crsql_forget_peer('0102030405060708090A0B0C0D0E0F10');
SELECT hex(site_id), expired FROM crsql_peers ORDER BY site_id;
INSERT INTO to_p(last_sent) VALUES ('[1,1]');
SELECT hex(site_id), expired FROM crsql_peers ORDER BY site_id;
SELECT crsql_forget_peer(X'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa');
SELECT crsql_forget_peer('ffffffffffffffffffffffffffffffff');
SELECT crsql_forget_peer(X'00');
SELECT crsql_forget_peer(7);
-- Read-only.
INSERT INTO crsql_peers VALUES (X'00', NULL, NULL, NULL, 0);
-- An outbound `peer` must be one site id.
CREATE VIRTUAL TABLE bad USING crsql_OutboundStream(peer = 'aa');
CREATE VIRTUAL TABLE bad USING crsql_OutboundStream(peer = '0102030405060708090a0b0c0d0e0f10,0102030405060708090a0b0c0d0e0f11');
