package stage

// sysSeccomp is the seccomp(2) system call number.
const sysSeccomp = 277
