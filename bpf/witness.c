// Witness: owner attribution and connection guards for the agent cgroups.
//
// Loaded by appliance/enforce/bpf.py with BCC (BPF(src_file=...)), attached to the agent
// cgroup root, and so in force for every cgroup below it. Only UAPI types are used
// (struct bpf_sock_addr, struct bpf_sock_ops, struct bpf_sock), so the programs compile
// against Debian's linux-headers-*-cloud-amd64 tree whatever kernel is running.
//
//   witness_connect4 / witness_connect6   cgroup/connect4, cgroup/connect6
//       Record the caller {tgid, tid, uid, gid, cgroup id, comm, time} in owner_by_cookie,
//       keyed by the socket cookie, for TCP sockets. connect6 also DENIES (EPERM) any
//       connect(2) to a protected range over IPv6, or to a protected IPv4 range written as
//       ::ffff:a.b.c.d: those would otherwise leave by a path nftables' IPv4 rules were not
//       written for. Any port, any protocol: nftables rejects everything but the diverted
//       ports on those ranges anyway, so nothing legitimate is lost.
//   witness_sock_ops                      sock_ops
//       On TCP_CONNECT_CB (the local address and port are chosen, the SYN is not sent yet)
//       and ACTIVE_ESTABLISHED_CB, copy the record to owner_by_conn, keyed by the
//       connection's 4-tuple as the client socket sees it: its local (address, port) and the
//       destination it connected to. That is what the recorder knows of the connection it
//       accepted: the peer address (nftables' redirect rewrites only the destination, so the
//       source the agent's socket is bound to is the source the recorder sees) and the
//       original destination (SO_ORIGINAL_DST). When the socket reaches TCP_CLOSE (also on
//       its way to TIME_WAIT), its record is deleted: a record never outlives its socket, so
//       a later socket that reuses the address and port can never be handed it. The record
//       keeps the socket's cookie, which the recorder checks against the kernel's view of
//       the live socket (sock_diag) before it believes the record.
//   witness_sock_create                   cgroup/sock_create
//       Deny SOCK_RAW sockets (EPERM) in the agent cgroups. The kernel runs this hook for
//       AF_INET and AF_INET6 only; the AF_PACKET test below is a guard for kernels that
//       run it more widely. AF_PACKET is denied by the agent launcher's seccomp filter
//       (appliance/enforce/confine.py), inherited by everything an agent starts: a
//       cgroup-wide BPF LSM program (socket_create) is not used because this kernel refuses
//       BPF LSM and fentry program loads (EPERM). See README, "Enforcement".
//
// Addresses in keys and records are 16 bytes: IPv6 as is, IPv4 as ::ffff:a.b.c.d, which is
// also how an IPv4 connection made from an IPv6 socket looks. So no family field is needed
// to tell them apart.

#include <uapi/linux/bpf.h>

#define AF_INET 2
#define AF_INET6 10
#define AF_PACKET 17
#define SOCK_STREAM 1
#define SOCK_RAW 3
#define TCP_CLOSE 7

#ifndef OWNER_CAPACITY
#define OWNER_CAPACITY 65536
#endif
#ifndef PENDING_CAPACITY
#define PENDING_CAPACITY 16384
#endif
#ifndef PROTECTED_CAPACITY
#define PROTECTED_CAPACITY 1024
#endif

struct owner {
    u64 cookie;      // the client socket's cookie
    u64 cgroup_id;   // cgroup v2 id of the connecting task (inode of its cgroup directory)
    u64 connect_ns;  // bpf_ktime_get_ns() at connect(2): CLOCK_MONOTONIC
    u32 tgid;        // process id
    u32 tid;         // thread that called connect(2)
    u32 uid;
    u32 gid;
    u8 local_addr[16];
    u8 remote_addr[16];  // the original destination (before any redirect)
    u16 local_port;      // host byte order
    u16 remote_port;     // host byte order
    u32 established;     // 1 once ACTIVE_ESTABLISHED_CB ran
    char comm[16];
};

struct conn_key {
    u8 local_addr[16];
    u8 remote_addr[16];
    u16 local_port;   // host byte order
    u16 remote_port;  // host byte order
    u32 pad;
};

struct net_key {
    u32 prefixlen;  // in bits, over the 16-byte (v4-mapped) address
    u8 addr[16];
};

BPF_TABLE("lru_hash", u64, struct owner, owner_by_cookie, PENDING_CAPACITY);
BPF_TABLE("lru_hash", struct conn_key, struct owner, owner_by_conn, OWNER_CAPACITY);
BPF_LPM_TRIE(protected_nets, struct net_key, u8, PROTECTED_CAPACITY);

static __always_inline void v4_mapped(u8 *out, u32 addr) {
    __builtin_memset(out, 0, 10);
    out[10] = 0xff;
    out[11] = 0xff;
    __builtin_memcpy(&out[12], &addr, 4);
}

// One 4-byte load per word: the verifier refuses the 8-byte loads clang would merge them into.
#define CTX32(field) (*(volatile u32 *)&(field))

static __always_inline void v6_copy(u8 *out, const u32 *words) {
    u32 a0 = CTX32(words[0]);
    u32 a1 = CTX32(words[1]);
    u32 a2 = CTX32(words[2]);
    u32 a3 = CTX32(words[3]);
    __builtin_memcpy(&out[0], &a0, 4);
    __builtin_memcpy(&out[4], &a1, 4);
    __builtin_memcpy(&out[8], &a2, 4);
    __builtin_memcpy(&out[12], &a3, 4);
}

static __always_inline void record(void *ctx, u32 type) {
    if (type != SOCK_STREAM)
        return;  // only TCP is re-keyed by sock_ops; do not fill the map with UDP sockets
    struct owner o = {};
    u64 id = bpf_get_current_pid_tgid();
    u64 ids = bpf_get_current_uid_gid();
    o.cookie = bpf_get_socket_cookie(ctx);
    o.cgroup_id = bpf_get_current_cgroup_id();
    o.connect_ns = bpf_ktime_get_ns();
    o.tgid = id >> 32;
    o.tid = (u32)id;
    o.uid = (u32)ids;
    o.gid = ids >> 32;
    bpf_get_current_comm(&o.comm, sizeof(o.comm));
    owner_by_cookie.update(&o.cookie, &o);
}

int witness_connect4(struct bpf_sock_addr *ctx) {
    record(ctx, ctx->type);
    return 1;
}

int witness_connect6(struct bpf_sock_addr *ctx) {
    struct net_key key = {};
    key.prefixlen = 128;
    v6_copy(key.addr, ctx->user_ip6);
    if (protected_nets.lookup(&key))
        return 0;  // EPERM: protected over IPv6, or IPv4 written as ::ffff:a.b.c.d
    record(ctx, ctx->type);
    return 1;
}

static __always_inline void conn_of(struct bpf_sock_ops *skops, struct conn_key *key) {
    if (skops->family == AF_INET) {
        v4_mapped(key->local_addr, skops->local_ip4);
        v4_mapped(key->remote_addr, skops->remote_ip4);
    } else {
        v6_copy(key->local_addr, skops->local_ip6);
        v6_copy(key->remote_addr, skops->remote_ip6);
    }
    key->local_port = (u16)skops->local_port;
    key->remote_port = bpf_ntohl(skops->remote_port) & 0xffff;
}

int witness_sock_ops(struct bpf_sock_ops *skops) {
    u32 op = skops->op;
    if (op != BPF_SOCK_OPS_TCP_CONNECT_CB && op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB &&
        op != BPF_SOCK_OPS_STATE_CB)
        return 1;
    if (skops->family != AF_INET && skops->family != AF_INET6)
        return 1;
    struct conn_key key = {};
    conn_of(skops, &key);
    u64 cookie = bpf_get_socket_cookie(skops);

    if (op == BPF_SOCK_OPS_STATE_CB) {
        // args[1] is the new state. The socket is gone as far as its owner is concerned:
        // so is its record (unless another socket's record took the key meanwhile).
        if (skops->args[1] == TCP_CLOSE) {
            struct owner *known = owner_by_conn.lookup(&key);
            if (known && known->cookie == cookie)
                owner_by_conn.delete(&key);
            owner_by_cookie.delete(&cookie);
        }
        return 1;
    }

    struct owner *pending = owner_by_cookie.lookup(&cookie);
    if (!pending)
        return 1;  // not connected through connect(2) in an agent cgroup, or evicted
    struct owner o = *pending;
    __builtin_memcpy(o.local_addr, key.local_addr, 16);
    __builtin_memcpy(o.remote_addr, key.remote_addr, 16);
    o.local_port = key.local_port;
    o.remote_port = key.remote_port;
    if (op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB) {
        o.established = 1;
        owner_by_cookie.delete(&cookie);
    } else {
        // Ask for state changes on this socket, to delete the record when it closes.
        bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
    }
    owner_by_conn.update(&key, &o);
    return 1;
}

int witness_sock_create(struct bpf_sock *sk) {
    if (sk->type == SOCK_RAW || sk->family == AF_PACKET)
        return 0;  // EPERM
    return 1;
}
