/*
 * podnet-pause: the process that holds a pod's namespaces.
 *
 * It waits for signals and nothing else: SIGCHLD reaps every exited child (it is the pod's
 * pid 1 when the pod shares its PID namespace, so orphans of app containers land here),
 * SIGTERM and SIGINT end it with status 0. The signals are blocked and taken synchronously
 * with sigwaitinfo, so no handler runs and pid 1's "default action is ignored" rule does not
 * swallow them. Built static (podnet starts it on an empty root with no libc to load).
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	sigset_t set;

	if (argc > 1 && strcmp(argv[1], "-v") == 0) {
		printf("podnet-pause %s\n", PODNET_VERSION);
		return 0;
	}
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	if (sigprocmask(SIG_BLOCK, &set, NULL) != 0)
		return 1;
	for (;;) {
		int sig = sigwaitinfo(&set, NULL);

		if (sig == SIGTERM || sig == SIGINT)
			return 0;
		if (sig == SIGCHLD)
			while (waitpid(-1, NULL, WNOHANG) > 0)
				;
	}
}
