/* Links the shared library through the C API: prints the version, and the message for a folder
 * that does not exist (exit 0 only when that open fails as documented). */
#include <stdio.h>

#include <rvos_edge/rvos_edge.h>

int main(void) {
    rvos_edge_segmenter* seg = NULL;
    rvos_edge_status status = rvos_edge_open("/nonexistent-artifacts", NULL, &seg);
    printf("rvos_edge %s: %s\n", rvos_edge_version(), rvos_edge_last_error());
    return status == RVOS_EDGE_BAD_ARTIFACTS && seg == NULL ? 0 : 1;
}
