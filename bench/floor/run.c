/* The least a cold `fvm run VM -- CMD` has to do, and nothing else: new mount,
 * pid, IPC and UTS namespaces; one overlay over / (with the options fvm gives
 * a VM's overlays) whose upper and work
 * directories are on disk (UPPER, WORK: kept between runs, as a VM's layer is);
 * pivot_root into it; a fresh /proc; fork and exec CMD; wait; exit with its
 * status. The kernel tears the namespaces down and unmounts the overlay when
 * the namespace's init exits, as it does for a VM.
 *
 * No cgroup, no confinement (seccomp, capabilities), no /dev, /sys or /run of
 * its own, no state recorded, no host mounts besides / (a VM gets one overlay per
 * host mount): it is a floor, not a sandbox. Used by bench/floors.
 *
 * usage: floor-run UPPER WORK MERGED CMD [ARG...]   (as root) */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void die(const char *what) {
	fprintf(stderr, "floor-run: %s: %s\n", what, strerror(errno));
	_exit(125);
}

static int wait_for(pid_t pid) {
	int status;
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			die("waitpid");
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int main(int argc, char **argv) {
	if (argc < 5) {
		fprintf(stderr, "usage: floor-run UPPER WORK MERGED CMD [ARG...]\n");
		return 2;
	}
	char opts[4096];
	snprintf(opts, sizeof opts, "lowerdir=/,upperdir=%s,workdir=%s,redirect_dir=off,index=off,metacopy=off,xino=on", argv[1], argv[2]);
	if (unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS) < 0)
		die("unshare");
	pid_t init = fork();
	if (init < 0)
		die("fork");
	if (init > 0)
		return wait_for(init);
	/* pid 1 of the new namespace */
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		die("make / private");
	if (mount("overlay", argv[3], "overlay", 0, opts) < 0)
		die("mount overlay");
	if (chdir(argv[3]) < 0)
		die("chdir");
	if (mount("proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
		die("mount proc");
	if (syscall(SYS_pivot_root, ".", ".") < 0)
		die("pivot_root");
	if (umount2(".", MNT_DETACH) < 0)
		die("detach the old root");
	if (chdir("/") < 0)
		die("chdir /");
	pid_t cmd = fork();
	if (cmd < 0)
		die("fork");
	if (cmd == 0) {
		execvp(argv[4], argv + 4);
		die("exec");
	}
	_exit(wait_for(cmd));
}
