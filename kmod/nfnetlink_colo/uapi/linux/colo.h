/* SPDX-License-Identifier: ((GPL-2.0 WITH Linux-syscall-note) OR BSD-3-Clause) */
/*
 * Userspace API of nf_colo.ko: the "colo" Generic Netlink family.
 *
 * Written by hand to match kmod/nfnetlink_colo/colo.yaml exactly (names follow
 * the kernel's YNL generator conventions: <FAMILY>_A_<SET>_<ATTR>,
 * <FAMILY>_CMD_<OP>, enum values <FAMILY>_<ENUM>_<ENTRY>).  colo.yaml is the
 * source of truth; change both together.
 */
#ifndef _UAPI_LINUX_COLO_H
#define _UAPI_LINUX_COLO_H

#define COLO_FAMILY_NAME	"colo"
#define COLO_FAMILY_VERSION	1

#define COLO_VERSION	1

/* Role of a node (values are those of the 2015 protocol). */
enum colo_mode {
	COLO_MODE_UNPROTECTED,
	COLO_MODE_PRIMARY,
	COLO_MODE_SECONDARY,
};

enum colo_state {
	COLO_STATE_ACTIVE,
	COLO_STATE_CHECKPOINT_PENDING,
	COLO_STATE_FAILED_OVER,
};

/* Why a checkpoint was requested (same names as colo_proxy.compare.Reason). */
enum colo_reason {
	COLO_REASON_UNSPEC,
	COLO_REASON_PAYLOAD_MISMATCH,
	COLO_REASON_CONTROL_MISMATCH,
	COLO_REASON_TIMEOUT,
	COLO_REASON_QUEUE_LIMIT,
	COLO_REASON_MEMORY_LIMIT,
	COLO_REASON_CONNECTION_LIMIT,
	COLO_REASON_MANUAL,
};

enum colo_gone_reason {
	COLO_GONE_REASON_UNSPEC,
	COLO_GONE_REASON_DESTROYED,
	COLO_GONE_REASON_OWNER_RELEASED,
	COLO_GONE_REASON_NETNS_EXIT,
	COLO_GONE_REASON_MODULE_UNLOAD,
};

enum {
	COLO_A_NODE_INDEX = 1,		/* u32, 1..65535 */
	COLO_A_NODE_MODE,		/* u8, enum colo_mode */
	COLO_A_NODE_STATE,		/* u8, enum colo_state */
	COLO_A_NODE_OWNER,		/* u32, netlink port id (reply only) */
	COLO_A_NODE_STATS,		/* nest, COLO_A_STATS_* */
	COLO_A_NODE_REASON,		/* u8, enum colo_reason */
	COLO_A_NODE_TUPLE,		/* nest, COLO_A_TUPLE_* */
	COLO_A_NODE_GONE_REASON,	/* u8, enum colo_gone_reason */
	COLO_A_NODE_PAD,

	__COLO_A_NODE_MAX,
	COLO_A_NODE_MAX = (__COLO_A_NODE_MAX - 1)
};

enum {
	COLO_A_STATS_CHECKPOINTS = 1,		/* u64 */
	COLO_A_STATS_CHECKPOINT_REQUESTS,	/* u64 */
	COLO_A_STATS_REQUESTS_SUPPRESSED,	/* u64 */
	COLO_A_STATS_FAILOVERS,			/* u64 */
	COLO_A_STATS_RESETS,			/* u64 */
	COLO_A_STATS_PAD,

	__COLO_A_STATS_MAX,
	COLO_A_STATS_MAX = (__COLO_A_STATS_MAX - 1)
};

enum {
	COLO_A_TUPLE_FAMILY = 1,	/* u8, IP version: 4 or 6 */
	COLO_A_TUPLE_PROTO,		/* u8 */
	COLO_A_TUPLE_SRC,		/* binary, 4 or 16 bytes (network order) */
	COLO_A_TUPLE_DST,		/* binary, 4 or 16 bytes (network order) */
	COLO_A_TUPLE_SPORT,		/* u16, host order */
	COLO_A_TUPLE_DPORT,		/* u16, host order */
	COLO_A_TUPLE_VLAN,		/* u16, 0..4095 */

	__COLO_A_TUPLE_MAX,
	COLO_A_TUPLE_MAX = (__COLO_A_TUPLE_MAX - 1)
};

enum {
	COLO_CMD_PROXY_INIT = 1,
	COLO_CMD_PROXY_RESET,
	COLO_CMD_DO_CHECKPOINT,
	COLO_CMD_DO_FAILOVER,
	COLO_CMD_GET,
	COLO_CMD_PROXY_DESTROY,
	COLO_CMD_REQUEST_CHECKPOINT,
	COLO_CMD_CHECKPOINT_REQUEST,	/* notification, events group */
	COLO_CMD_NODE_GONE,		/* notification, events group */

	__COLO_CMD_MAX,
	COLO_CMD_MAX = (__COLO_CMD_MAX - 1)
};

#define COLO_MCGRP_EVENTS	"events"

#endif /* _UAPI_LINUX_COLO_H */
