/* The C ABI from C, where an enum parameter may carry any int (issue 15, kind 8):
 * out-of-range af_status and af_backend values get an answer, not undefined
 * behaviour (the sanitizer build runs this with -fsanitize=enum), and a
 * success leaves no stale message behind. Exit status: the number of failures. */
#include <stdio.h>
#include <string.h>

#include "attnforge/attnforge.h"

static int failures = 0;

static void expect(int ok, const char* what) {
  if (!ok) {
    fprintf(stderr, "FAILED: %s (last error: '%s')\n", what, af_last_error_message());
    ++failures;
  }
}

int main(void) {
  const int statuses[] = {-1, 18, 99, 2147483647, -2147483647 - 1};
  const int backends[] = {-1, 3, 7, 2147483647, -2147483647 - 1};
  unsigned i;
  for (i = 0; i < sizeof statuses / sizeof statuses[0]; ++i)
    expect(strcmp(af_status_string((af_status)statuses[i]), "AF_ERR_UNKNOWN_STATUS") == 0,
           "af_status_string of an out-of-range status");
  expect(strcmp(af_status_string(AF_ERR_SEQLENS), "AF_ERR_SEQLENS") == 0, "af_status_string(AF_ERR_SEQLENS)");

  for (i = 0; i < sizeof backends / sizeof backends[0]; ++i) {
    char expected[64];
    snprintf(expected, sizeof expected, "backend %d is not an af_backend value", backends[i]);
    expect(af_backend_available((af_backend)backends[i]) == AF_ERR_INVALID_ARGUMENT,
           "af_backend_available of an out-of-range backend is AF_ERR_INVALID_ARGUMENT");
    expect(strstr(af_last_error_message(), expected) != NULL, "the message names the backend value");
  }

  /* A failure, then a success on the same thread: the message is gone. */
  expect(af_attention_forward(NULL) == AF_ERR_NULL_POINTER, "af_attention_forward(NULL)");
  expect(af_last_error_message()[0] != '\0', "a failure has a message");
  expect(af_backend_available(AF_BACKEND_CPU) == AF_OK, "the CPU backend is available");
  expect(af_last_error_message()[0] == '\0', "no stale message after a success");
  expect(af_set_num_threads(100000) == AF_ERR_INVALID_ARGUMENT, "af_set_num_threads(100000) is refused");
  expect(strstr(af_last_error_message(), "n = 100000") != NULL, "the message names n");
  expect(af_set_num_threads(0) == AF_OK && af_last_error_message()[0] == '\0', "af_set_num_threads(0) restores");
  return failures;
}
