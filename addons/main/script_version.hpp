#define MAJOR 0
#define MINOR 1
#define PATCHLVL 0
#define BUILD 0
