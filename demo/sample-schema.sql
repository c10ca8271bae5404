-- Sample schema of a public-safety CAD system. Encrypted columns hold `v<N>:base64` values:
-- incidents.title, incident_communications.body, cfs_incidents.raw_xml. status stays plain text.
create table incidents (
  id bigint primary key,
  title text,
  status text,
  updated_at timestamptz
);

create table incident_communications (
  id bigint primary key,
  incident_id bigint,
  body text,
  sent_at timestamptz
);

-- raw_xml is the 911 front end's call-for-service document, 2-8 kB: stored out of line (TOAST).
create table cfs_incidents (
  id bigint primary key,
  raw_xml text,
  received_at timestamptz
);
