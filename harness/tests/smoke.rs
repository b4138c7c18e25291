use crsql_stream_harness::open_memory;

#[test]
fn extension_loads_and_reports_a_site_id() {
    let conn = open_memory();
    let site: Vec<u8> = conn
        .query_row("SELECT crsql_site_id()", [], |r| r.get(0))
        .unwrap();
    assert_eq!(site.len(), 16);
    assert_eq!(site[6] & 0xF0, 0x40, "UUID v4 version nibble");
}
