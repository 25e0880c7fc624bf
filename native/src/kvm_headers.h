// <linux/kvm.h> for C++. The uapi headers of this Linux version declare flexible arrays with
// __DECLARE_FLEX_ARRAY, an empty struct followed by the array: in C++ an empty struct takes
// one byte, which moves the array and changes the size encoded in ioctl numbers
// (KVM_GET_SUPPORTED_CPUID came out as size 12 instead of 8 and failed with EINVAL).
// Redefine it as a GNU zero-length array, which has C's layout, and check the layouts.
#pragma once
#include <linux/stddef.h>
#undef __DECLARE_FLEX_ARRAY
#define __DECLARE_FLEX_ARRAY(TYPE, NAME) TYPE NAME[0]
#include <linux/kvm.h>

#include <cstddef>

static_assert(sizeof(struct kvm_cpuid2) == 8 && offsetof(struct kvm_cpuid2, entries) == 8, "kvm_cpuid2 layout");
static_assert(sizeof(struct kvm_msrs) == 8 && offsetof(struct kvm_msrs, entries) == 8, "kvm_msrs layout");
static_assert(sizeof(struct kvm_msr_list) == 4 && offsetof(struct kvm_msr_list, indices) == 4, "kvm_msr_list layout");
static_assert(sizeof(struct kvm_irq_routing) == 8 && offsetof(struct kvm_irq_routing, entries) == 8,
              "kvm_irq_routing layout");
static_assert(sizeof(struct kvm_xsave) == 4096, "kvm_xsave layout");
static_assert(sizeof(struct kvm_run) == 2352 && offsetof(struct kvm_run, exit_reason) == 8 &&
                  offsetof(struct kvm_run, io) == 32,
              "kvm_run layout (src/native/kvm.ts mirrors it)");
