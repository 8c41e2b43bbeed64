// SPDX-License-Identifier: GPL-2.0
/*
 * Frame classification for the compare core: one pass over the headers, the same
 * rules as colo_proxy/compare/parse.py (docs/compare.md, "Parsing").  Never fails:
 * every frame gets a class, and what cannot be parsed is compared as opaque bytes.
 */
#include "cmp.h"

#define ETH_HLEN_	14
#define ET_IP4		0x0800
#define ET_IP6		0x86DD
#define ET_ARP		0x0806
#define ET_RARP		0x8035
#define ET_LLDP		0x88CC

static bool is_vlan_tpid(u16 et)
{
	return et == 0x8100 || et == 0x88A8 || et == 0x9100;
}

static bool is_port_proto(u8 proto)
{
	return proto == 33 || proto == 132 || proto == 136;	/* DCCP, SCTP, UDP-Lite */
}

static void key_init(struct colo_cmp_key *k, s64 vlan, u16 l3)
{
	memset(k, 0, sizeof(*k));
	k->vlan = vlan;
	k->l3 = l3;
}

static void key_addrs(struct colo_cmp_key *k, const u8 *src, const u8 *dst, u8 alen)
{
	k->alen = alen;
	memcpy(k->src, src, alen);
	memcpy(k->dst, dst, alen);
}

static void set_fifo(struct colo_cmp_pkt *pkt, const u8 *body, u32 body_len)
{
	pkt->cls = COLO_CMP_FIFO;
	pkt->body = body;
	pkt->body_len = body_len;
}

/* Opaque bytes: everything from @off, keyed by (vlan, l3) only. */
static void opaque(struct colo_cmp_pkt *pkt, const u8 *frame, u32 len, u32 off, s64 vlan,
		   u16 l3, bool malformed)
{
	key_init(&pkt->key, vlan, l3);
	pkt->malformed = malformed;
	pkt->head_len = 0;
	set_fifo(pkt, frame + off, len - off);
}

static void control(struct colo_cmp_pkt *pkt, s64 vlan, u16 l3)
{
	key_init(&pkt->key, vlan, l3);
	pkt->cls = COLO_CMP_CONTROL;
}

static void tcp(struct colo_cmp_pkt *pkt, const u8 *frame, u32 len, u32 off, u32 l4, u32 end,
		u16 et)
{
	u32 doff;

	if (end - l4 < 20) {
		opaque(pkt, frame, len, off, pkt->key.vlan, et, true);
		return;
	}
	doff = (u32)(frame[l4 + 12] >> 4) << 2;
	if (doff < 20 || l4 + doff > end) {
		opaque(pkt, frame, len, off, pkt->key.vlan, et, true);
		return;
	}
	pkt->cls = COLO_CMP_TCP;
	pkt->key.proto = 6;
	pkt->key.sport = cmp_be16(frame + l4);
	pkt->key.dport = cmp_be16(frame + l4 + 2);
	pkt->seq = cmp_be32(frame + l4 + 4);
	pkt->ack = cmp_be32(frame + l4 + 8);
	pkt->flags = frame[l4 + 13];
	pkt->payload = frame + l4 + doff;
	pkt->plen = end - l4 - doff;
}

/* UDP: ports and length, then the payload (the checksum is skipped). */
static void udp(struct colo_cmp_pkt *pkt, const u8 *frame, u32 len, u32 off, u32 l4, u32 end,
		u16 et)
{
	if (end - l4 < 8) {
		opaque(pkt, frame, len, off, pkt->key.vlan, et, true);
		return;
	}
	pkt->key.proto = 17;
	pkt->key.sport = cmp_be16(frame + l4);
	pkt->key.dport = cmp_be16(frame + l4 + 2);
	memcpy(pkt->head, frame + l4, 6);
	pkt->head_len = 6;
	set_fifo(pkt, frame + l4 + 8, end - l4 - 8);
}

/* ICMP and ICMPv6: type and code, then the rest (the checksum is skipped). */
static void icmp(struct colo_cmp_pkt *pkt, const u8 *frame, u32 len, u32 off, u32 l4, u32 end,
		 u8 proto, u16 et)
{
	if (end - l4 < 4) {
		opaque(pkt, frame, len, off, pkt->key.vlan, et, true);
		return;
	}
	pkt->key.proto = proto;
	memcpy(pkt->head, frame + l4, 2);
	pkt->head_len = 2;
	set_fifo(pkt, frame + l4 + 4, end - l4 - 4);
}

static void fragment(struct colo_cmp_pkt *pkt, const u8 *frame, u8 proto, u16 fo, u32 from,
		     u32 end)
{
	pkt->key.proto = proto;
	pkt->key.frag = 1;
	pkt->head[0] = (u8)(fo >> 8);
	pkt->head[1] = (u8)fo;
	pkt->head_len = 2;
	set_fifo(pkt, frame + from, end - from);
}

static void ports_of(struct colo_cmp_pkt *pkt, const u8 *frame, u32 l4, u32 end)
{
	if (is_port_proto(pkt->key.proto) && end - l4 >= 4) {
		pkt->key.sport = cmp_be16(frame + l4);
		pkt->key.dport = cmp_be16(frame + l4 + 2);
	}
}

static void ip4(struct colo_cmp_pkt *pkt, const u8 *frame, u32 len, u32 off, u32 l3, s64 vlan)
{
	u32 ihl, total, end, l4;
	u16 frag;
	u8 proto;

	if (len - l3 < 20) {
		opaque(pkt, frame, len, off, vlan, ET_IP4, true);
		return;
	}
	ihl = (u32)(frame[l3] & 15) << 2;
	total = cmp_be16(frame + l3 + 2);
	end = l3 + total;
	if (frame[l3] >> 4 != 4 || ihl < 20 || total < ihl || end > len) {
		opaque(pkt, frame, len, off, vlan, ET_IP4, true);
		return;
	}
	frag = cmp_be16(frame + l3 + 6);
	proto = frame[l3 + 9];
	key_init(&pkt->key, vlan, 4);
	key_addrs(&pkt->key, frame + l3 + 12, frame + l3 + 16, 4);
	l4 = l3 + ihl;
	if (frag & 0x3FFF) {
		/* Fragment offset and MF; DF and the IP ID are not compared. */
		fragment(pkt, frame, proto, frag & 0x3FFF, l4, end);
		return;
	}
	if (proto == 6) {
		tcp(pkt, frame, len, off, l4, end, ET_IP4);
		return;
	}
	if (proto == 17) {
		udp(pkt, frame, len, off, l4, end, ET_IP4);
		return;
	}
	if (proto == 1) {
		icmp(pkt, frame, len, off, l4, end, 1, ET_IP4);
		return;
	}
	/* Any other protocol: the whole packet, with the fields that legitimately
	 * differ masked (ECN, identification, TTL, header checksum).
	 */
	pkt->key.proto = proto;
	memcpy(pkt->head, frame + l3, 12);
	pkt->head[1] &= 0xFC;
	pkt->head[4] = 0;
	pkt->head[5] = 0;
	pkt->head[8] = 0;
	pkt->head[10] = 0;
	pkt->head[11] = 0;
	pkt->head_len = 12;
	ports_of(pkt, frame, l4, end);
	set_fifo(pkt, frame + l3 + 12, end - l3 - 12);
}

static bool is_nd(u8 type)
{
	return type >= 133 && type <= 137;	/* RS, RA, NS, NA, redirect */
}

static void ip6(struct colo_cmp_pkt *pkt, const u8 *frame, u32 len, u32 off, u32 l3, s64 vlan)
{
	u32 end, p, i;
	u8 nh, nxt;
	u16 fo;

	if (len - l3 < 40 || frame[l3] >> 4 != 6) {
		opaque(pkt, frame, len, off, vlan, ET_IP6, true);
		return;
	}
	end = l3 + 40 + cmp_be16(frame + l3 + 4);
	if (end > len) {
		opaque(pkt, frame, len, off, vlan, ET_IP6, true);
		return;
	}
	nh = frame[l3 + 6];
	key_init(&pkt->key, vlan, 6);
	key_addrs(&pkt->key, frame + l3 + 8, frame + l3 + 24, 16);
	p = l3 + 40;
	for (i = 0; i < COLO_CMP_MAX_IP6_EXT; i++) {
		if (nh == 0 || nh == 43 || nh == 60 || nh == 51) {
			if (end - p < 8)
				goto bad;
			nxt = frame[p];
			if (nh == 51)
				p += (u32)(frame[p + 1] + 2) << 2;
			else
				p += (u32)(frame[p + 1] + 1) << 3;
			nh = nxt;
			if (p > end)
				goto bad;
		} else if (nh == 44) {
			if (end - p < 8)
				goto bad;
			nxt = frame[p];
			fo = cmp_be16(frame + p + 2) & 0xFFF9;	/* offset and M */
			if (fo) {
				fragment(pkt, frame, nxt, fo, p + 8, end);
				return;
			}
			p += 8;		/* atomic fragment: a whole packet */
			nh = nxt;
		} else {
			break;
		}
	}
	if (i == COLO_CMP_MAX_IP6_EXT)
		goto bad;
	if (nh == 6) {
		tcp(pkt, frame, len, off, p, end, ET_IP6);
		return;
	}
	if (nh == 17) {
		udp(pkt, frame, len, off, p, end, ET_IP6);
		return;
	}
	if (nh == 58) {
		if (end - p >= 4 && is_nd(frame[p])) {
			pkt->cls = COLO_CMP_CONTROL;
			pkt->key.proto = 58;
			return;
		}
		icmp(pkt, frame, len, off, p, end, 58, ET_IP6);
		return;
	}
	pkt->key.proto = nh;
	memcpy(pkt->head, frame + l3, 8);
	pkt->head[1] &= 0xC0;	/* ECN bits and the flow label's top nibble */
	pkt->head[2] = 0;
	pkt->head[3] = 0;
	pkt->head[7] = 0;	/* hop limit */
	pkt->head_len = 8;
	ports_of(pkt, frame, p, end);
	set_fifo(pkt, frame + l3 + 8, end - l3 - 8);
	return;
bad:
	opaque(pkt, frame, len, off, vlan, ET_IP6, true);
}

static const u8 link_local_mac[5] = { 0x01, 0x80, 0xc2, 0x00, 0x00 };

void colo_cmp_parse(const u8 *frame, u32 len, s32 vnet_hdr_len, struct colo_cmp_pkt *pkt)
{
	u32 off, l3;
	unsigned int tags;
	s64 vlan = COLO_CMP_VLAN_NONE;
	u16 et;

	memset(pkt, 0, sizeof(*pkt));
	if (vnet_hdr_len < 0 || (u32)vnet_hdr_len > len) {
		if (!len) {
			pkt->cls = COLO_CMP_EMPTY;
			return;
		}
		opaque(pkt, frame, len, 0, COLO_CMP_VLAN_NONE, COLO_CMP_RAW_L3, true);
		return;
	}
	off = (u32)vnet_hdr_len;
	if (off == len) {
		pkt->cls = COLO_CMP_EMPTY;
		return;
	}
	if (len - off < ETH_HLEN_) {
		opaque(pkt, frame, len, off, COLO_CMP_VLAN_NONE, COLO_CMP_RAW_L3, true);
		return;
	}
	et = cmp_be16(frame + off + 12);
	l3 = off + ETH_HLEN_;
	if (is_vlan_tpid(et)) {
		tags = 0;
		vlan = 0;
		while (is_vlan_tpid(et)) {
			if (tags == COLO_CMP_MAX_VLAN_TAGS || len - l3 < 4) {
				opaque(pkt, frame, len, off, tags ? vlan : COLO_CMP_VLAN_NONE, et, true);
				return;
			}
			vlan = (vlan << 12) | (cmp_be16(frame + l3) & 0xFFF);
			et = cmp_be16(frame + l3 + 2);
			l3 += 4;
			tags++;
		}
	}
	if (frame[off] == 1 && !memcmp(frame + off, link_local_mac, sizeof(link_local_mac))) {
		control(pkt, vlan, et >= 0x600 ? et : COLO_CMP_RAW_L3);
		return;
	}
	if (et == ET_IP4) {
		ip4(pkt, frame, len, off, l3, vlan);
		return;
	}
	if (et == ET_IP6) {
		ip6(pkt, frame, len, off, l3, vlan);
		return;
	}
	if (et == ET_ARP || et == ET_RARP || et == ET_LLDP) {
		control(pkt, vlan, et);
		return;
	}
	opaque(pkt, frame, len, off, vlan, et < 0x600 ? COLO_CMP_RAW_L3 : et, false);
}

bool colo_cmp_bytes_equal(const struct colo_cmp_bytes *a, const struct colo_cmp_bytes *b)
{
	u32 n = colo_cmp_bytes_len(a), i;

	if (n != colo_cmp_bytes_len(b))
		return false;
	if (a->head_len == b->head_len)
		return !memcmp(a->head, b->head, a->head_len) &&
		       !memcmp(a->body, b->body, a->body_len);
	for (i = 0; i < n; i++)
		if (colo_cmp_bytes_at(a, i) != colo_cmp_bytes_at(b, i))
			return false;
	return true;
}

u32 colo_cmp_bytes_first_diff(const struct colo_cmp_bytes *a, const struct colo_cmp_bytes *b)
{
	u32 n = min_t(u32, colo_cmp_bytes_len(a), colo_cmp_bytes_len(b)), i;

	for (i = 0; i < n; i++)
		if (colo_cmp_bytes_at(a, i) != colo_cmp_bytes_at(b, i))
			break;
	return i;
}

u32 colo_cmp_bytes_copy(const struct colo_cmp_bytes *b, u32 from, u8 *dst, u32 max)
{
	u32 n = colo_cmp_bytes_len(b), i, k = 0;

	for (i = from; i < n && k < max; i++)
		dst[k++] = colo_cmp_bytes_at(b, i);
	return k;
}
