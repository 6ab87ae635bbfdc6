class Extended_PreInit_EventHandlers {
    class ADDON {
        init = XEH_SCRIPT(XEH_preInit);
    };
};

class Extended_PostInit_EventHandlers {
    class ADDON {
        init = XEH_SCRIPT(XEH_postInit);
    };
};
