#define LOG(msg) diag_log text msg
LOG(format ["%1", 1]);
