// SPDX-License-Identifier: GPL-2.0
/*
 * colo_buggy: a deliberately broken module, built only for the debug kernel's self-test
 * (tests/kernel/buggy/selftest.sh).  It proves that the debug kernel and the guest harness's
 * dmesg check catch the bug classes they exist for.  Never load it anywhere else.
 *
 * Each bug fires when 1 is written to its parameter, /sys/module/colo_buggy/parameters/NAME:
 *   inversion  takes lock a then b, then b then a       -> lockdep: circular locking dependency
 *   bh         takes lock c with BH enabled in process
 *              context and from a timer (softirq)        -> lockdep: inconsistent lock state
 *   uaf        reads a kmalloc'ed object after kfree     -> KASAN: slab-use-after-free
 *   leak       drops the only pointer to a kmalloc'ed
 *              object                                    -> kmemleak: unreferenced object
 *   warn       WARN()s                                   -> WARNING (any kernel: checks the
 *                                                           self-test's own plumbing)
 * lockdep switches itself off after its first report, so `inversion` and `bh` need one boot
 * each to both be seen.
 */
#include <linux/compiler.h>
#include <linux/jiffies.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/timer.h>

static DEFINE_SPINLOCK(buggy_a);
static DEFINE_SPINLOCK(buggy_b);
static DEFINE_SPINLOCK(buggy_c);
static struct timer_list buggy_timer;

static void buggy_inversion(void)
{
	spin_lock(&buggy_a);
	spin_lock(&buggy_b);
	spin_unlock(&buggy_b);
	spin_unlock(&buggy_a);

	spin_lock(&buggy_b);
	spin_lock(&buggy_a);		/* the inversion: b -> a after a -> b */
	spin_unlock(&buggy_a);
	spin_unlock(&buggy_b);
}

static void buggy_timer_fn(struct timer_list *t)
{
	spin_lock(&buggy_c);		/* softirq context */
	spin_unlock(&buggy_c);
}

static void buggy_bh(void)
{
	spin_lock(&buggy_c);		/* process context, BH enabled: should be spin_lock_bh */
	spin_unlock(&buggy_c);
	mod_timer(&buggy_timer, jiffies + 1);
}

static void buggy_uaf(void)
{
	char *p = kmalloc(64, GFP_KERNEL);

	if (!p)
		return;
	p[0] = 'x';
	kfree(p);
	OPTIMIZER_HIDE_VAR(p);
	pr_info("colo_buggy: read after free: %d\n", READ_ONCE(p[0]));
}

static void buggy_leak(void)
{
	char *p = kmalloc(128, GFP_KERNEL);

	OPTIMIZER_HIDE_VAR(p);
	if (p)
		memset(p, 0x5a, 128);
	pr_info("colo_buggy: leaked a 128-byte object\n");
}

static void buggy_warn(void)
{
	WARN(1, "colo_buggy: deliberate warning\n");
}

static int buggy_set(const char *val, const struct kernel_param *kp)
{
	void (*fire)(void) = kp->arg;
	bool on;
	int err = kstrtobool(val, &on);

	if (err)
		return err;
	if (on)
		fire();
	return 0;
}

static const struct kernel_param_ops buggy_ops = {
	.set = buggy_set,
	.get = NULL,
};

module_param_cb(inversion, &buggy_ops, buggy_inversion, 0200);
MODULE_PARM_DESC(inversion, "write 1: lock-order inversion (lockdep)");
module_param_cb(bh, &buggy_ops, buggy_bh, 0200);
MODULE_PARM_DESC(bh, "write 1: lock taken with BH on and from softirq (lockdep)");
module_param_cb(uaf, &buggy_ops, buggy_uaf, 0200);
MODULE_PARM_DESC(uaf, "write 1: use-after-free read (KASAN)");
module_param_cb(leak, &buggy_ops, buggy_leak, 0200);
MODULE_PARM_DESC(leak, "write 1: leak an object (kmemleak)");
module_param_cb(warn, &buggy_ops, buggy_warn, 0200);
MODULE_PARM_DESC(warn, "write 1: WARN() (any kernel)");

static int __init buggy_init(void)
{
	timer_setup(&buggy_timer, buggy_timer_fn, 0);
	pr_info("colo_buggy: loaded; this module is broken on purpose (debug-kernel self-test)\n");
	return 0;
}

static void __exit buggy_exit(void)
{
	timer_shutdown_sync(&buggy_timer);
}

module_init(buggy_init);
module_exit(buggy_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Deliberately buggy module for the debug kernel self-test");
