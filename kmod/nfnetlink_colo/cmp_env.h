/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The compare core builds in two places: inside nf_colo.ko, and as a userspace
 * shared library that the host tests drive against the Python engine
 * (tests/unit/ccore.py).  This header is the whole difference between them: fixed
 * width types, memcmp/memcpy, and allocation.  The core itself touches no skb, takes
 * no lock and reads no clock; its callers do.
 */
#ifndef _COLO_CMP_ENV_H
#define _COLO_CMP_ENV_H

#ifdef __KERNEL__
#include <linux/types.h>
#include <linux/string.h>
#include <linux/minmax.h>
#else
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int8_t s8;
typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;
typedef int16_t s16;
typedef int32_t s32;
typedef int64_t s64;

#define likely(x)	__builtin_expect(!!(x), 1)
#define unlikely(x)	__builtin_expect(!!(x), 0)
#define min_t(t, a, b)	((t)(a) < (t)(b) ? (t)(a) : (t)(b))
#endif /* __KERNEL__ */

/* Big-endian loads from a byte buffer, alignment-free, in both environments. */
static inline u16 cmp_be16(const u8 *p)
{
	return (u16)((p[0] << 8) | p[1]);
}

static inline u32 cmp_be32(const u8 *p)
{
	return ((u32)p[0] << 24) | ((u32)p[1] << 16) | ((u32)p[2] << 8) | p[3];
}

#endif /* _COLO_CMP_ENV_H */
