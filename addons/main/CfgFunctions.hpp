// The public functions, icom_fnc_<name> from functions\fn_<name>.sqf.
class CfgFunctions {
    class PREFIX {
        tag = QUOTE(PREFIX);
        class COMPONENT {
            file = QPATHTOF(functions);
            class broadcast {};
            class call {};
            class connect {};
            class disconnect {};
            class fetch {};
            class forget {};
            class handleCallback {};
            class peers {};
            class reply {};
            class request {};
            class returnCredit {};
            class send {};
            class sendTo {};
            class status {};
            class checkTimeouts {};
        };
    };
};
