// C helpers for kumod that Swift's Glibc module does not expose (GNU extensions).
#ifndef CKUMOD_H
#define CKUMOD_H
#include <spawn.h>

/// posix_spawn_file_actions_addclosefrom_np (glibc ≥ 2.34): close every descriptor from `from` up in
/// the child.
int ckumod_spawn_addclosefrom(posix_spawn_file_actions_t *actions, int from);

/// POSIX_SPAWN_SETSID (glibc ≥ 2.26).
int ckumod_spawn_setsid_flag(void);
#endif
